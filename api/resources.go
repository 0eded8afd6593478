package api

import (
	"net/http"

	"github.com/zygote/zygote/instances"
)

// InstanceStats is GET /instances/{id}/stats (hypeman's shape).
type InstanceStats struct {
	InstanceID             string   `json:"instance_id"`
	InstanceName           string   `json:"instance_name"`
	AllocatedMemoryBytes   int64    `json:"allocated_memory_bytes"`
	AllocatedVCPUs         int      `json:"allocated_vcpus"`
	CPUSeconds             float64  `json:"cpu_seconds"`
	MemoryRSSBytes         int64    `json:"memory_rss_bytes"`
	MemoryVMSBytes         int64    `json:"memory_vms_bytes"`
	NetworkRxBytes         uint64   `json:"network_rx_bytes"`
	NetworkTxBytes         uint64   `json:"network_tx_bytes"`
	MemoryUtilizationRatio *float64 `json:"memory_utilization_ratio,omitempty"`
}

// ResourceStatus is one host resource in GET /resources.
type ResourceStatus struct {
	Type           string  `json:"type"`
	Capacity       int64   `json:"capacity"`
	EffectiveLimit int64   `json:"effective_limit"`
	Allocated      int64   `json:"allocated"`
	Available      int64   `json:"available"`
	OversubRatio   float64 `json:"oversub_ratio"`
	Source         string  `json:"source,omitempty"`
}

// ResourceAllocation is what one active instance holds.
type ResourceAllocation struct {
	InstanceID   string `json:"instance_id"`
	InstanceName string `json:"instance_name"`
	CPU          int    `json:"cpu"`
	MemoryBytes  int64  `json:"memory_bytes"`
	DiskBytes    int64  `json:"disk_bytes"`
	NetworkBps   int64  `json:"network_bps"`
}

// Resources is GET /resources (hypeman's shape; gpu is always null).
type Resources struct {
	CPU          ResourceStatus       `json:"cpu"`
	Memory       ResourceStatus       `json:"memory"`
	Disk         ResourceStatus       `json:"disk"`
	Network      ResourceStatus       `json:"network"`
	DiskIO       ResourceStatus       `json:"disk_io"`
	GPU          *struct{}            `json:"gpu"`
	NetworkSlots int                  `json:"network_slots"`
	Allocations  []ResourceAllocation `json:"allocations"`
}

func (s *Server) instanceStats(w http.ResponseWriter, r *http.Request) {
	st, err := s.m.Stats(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	out := InstanceStats{
		InstanceID: st.ID, InstanceName: st.Name, AllocatedMemoryBytes: st.AllocatedMemoryBytes,
		AllocatedVCPUs: st.AllocatedVCPUs, CPUSeconds: st.CPUSeconds, MemoryRSSBytes: st.MemoryRSSBytes,
		MemoryVMSBytes: st.MemoryVMSBytes, NetworkRxBytes: st.NetworkRxBytes, NetworkTxBytes: st.NetworkTxBytes,
	}
	if st.AllocatedMemoryBytes > 0 {
		ratio := float64(st.MemoryRSSBytes) / float64(st.AllocatedMemoryBytes)
		out.MemoryUtilizationRatio = &ratio
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) resources(w http.ResponseWriter, r *http.Request) {
	res, err := s.m.Resources(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	conv := func(s instances.ResourceStatus) ResourceStatus {
		return ResourceStatus{Type: s.Type, Capacity: s.Capacity, EffectiveLimit: s.EffectiveLimit, Allocated: s.Allocated,
			Available: s.Available, OversubRatio: s.OversubRatio, Source: s.Source}
	}
	out := Resources{CPU: conv(res.CPU), Memory: conv(res.Memory), Disk: conv(res.Disk), Network: conv(res.Network),
		DiskIO: conv(res.DiskIO), NetworkSlots: res.NetworkSlots, Allocations: []ResourceAllocation{}}
	for _, a := range res.Allocations {
		out.Allocations = append(out.Allocations, ResourceAllocation{InstanceID: a.ID, InstanceName: a.Name, CPU: a.VCPUs,
			MemoryBytes: a.MemoryBytes, DiskBytes: a.DiskBytes})
	}
	writeJSON(w, http.StatusOK, out)
}
