package agentproto

// The initramfs layout zygote-init relies on. The builder (package guest)
// writes it; zygote-init reads it.
const (
	// InitramfsModulesDir holds the kernel modules (.ko) init loads.
	InitramfsModulesDir = "/lib/modules/zygote"
	// InitramfsModuleOrder lists the file names in InitramfsModulesDir, one
	// per line, in load order. Modules built into the kernel are absent.
	InitramfsModuleOrder = InitramfsModulesDir + "/modules.order"
	// InitramfsFSModules lists, one line per filesystem, "fstype a.ko
	// b.ko": the modules (in InitramfsModulesDir) to load, in order, before
	// mounting that filesystem. Not in InitramfsModuleOrder: loaded on
	// demand.
	InitramfsFSModules = InitramfsModulesDir + "/filesystems"
	// InitramfsBusybox is the static busybox; applet symlinks point at it.
	InitramfsBusybox = "/bin/busybox"
)
