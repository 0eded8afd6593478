package qemu

// KeepPageCache lets a benchmark compare restores with and without the
// page-cache eviction after a standby.
func KeepPageCache(d *Driver, keep bool) { d.keepPageCache = keep }
