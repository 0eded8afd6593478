package instancestest

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"

	"github.com/zygote/zygote/errdefs"
	"github.com/zygote/zygote/instances"
)

// FakeNetwork is a test double for network.Manager (an
// instances.Networker): it hands out addresses from 10.89.0.0/16 and
// keeps its slots in memory, which outlive a Harness.Restart as the real
// slots (on disk) outlive the daemon. Its TAPs are /dev/null. The real
// slots are tested in package network and, with VMs, in e2e.
type FakeNetwork struct {
	mu    sync.Mutex
	next  int
	slots map[string]*fakeSlot // by owner
	// FailAcquire, when set, makes Acquire fail with it (a failing CNI
	// plugin), leaving nothing behind.
	FailAcquire error
	acquires    int
}

type fakeSlot struct {
	ip         net.IP
	publish    []instances.Port
	allowPeers bool
}

func (s *fakeSlot) IP() net.IP                 { return s.ip }
func (s *fakeSlot) Network() string            { return "fake" }
func (s *fakeSlot) OpenTAP() (*os.File, error) { return os.Open(os.DevNull) }

// NewFakeNetwork returns an empty fake network.
func NewFakeNetwork() *FakeNetwork { return &FakeNetwork{slots: map[string]*fakeSlot{}} }

var _ instances.Networker = (*FakeNetwork)(nil)

// Acquire gives owner a new address.
func (n *FakeNetwork) Acquire(ctx context.Context, owner string, opts instances.NetOptions) (instances.NetSlot, error) {
	publish := opts.Publish
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.slots[owner] != nil {
		return nil, fmt.Errorf("fake network: %s already has a slot: %w", owner, errdefs.ErrAlreadyExists)
	}
	for o, s := range n.slots {
		for _, p := range s.publish {
			for _, q := range publish {
				if p.HostPort == q.HostPort && p.Protocol == q.Protocol {
					return nil, fmt.Errorf("fake network: host port %d/%s is published by %s: %w", q.HostPort, q.Protocol, o, errdefs.ErrConflict)
				}
			}
		}
	}
	if n.FailAcquire != nil {
		return nil, n.FailAcquire
	}
	n.next++
	n.acquires++
	a := n.next + 1 // .0.1 is the gateway
	s := &fakeSlot{ip: net.IPv4(10, 89, byte(a>>8), byte(a)), publish: slices.Clone(publish), allowPeers: opts.AllowPeers}
	n.slots[owner] = s
	return s, nil
}

// Get returns owner's slot.
func (n *FakeNetwork) Get(owner string) (instances.NetSlot, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.slots[owner]
	if s == nil {
		return nil, fmt.Errorf("fake network: slot of %s: %w", owner, errdefs.ErrNotFound)
	}
	return s, nil
}

// Release frees owner's slot (a no-op without one).
func (n *FakeNetwork) Release(ctx context.Context, owner string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.slots, owner)
	return nil
}

// Reconcile releases the slots of owners not in live.
func (n *FakeNetwork) Reconcile(ctx context.Context, live map[string]bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for o := range n.slots {
		if !live[o] {
			delete(n.slots, o)
		}
	}
	return nil
}

// Stats are zero: no traffic crosses a fake slot.
func (n *FakeNetwork) Stats(owner string) (instances.NetStats, error) {
	if _, err := n.Get(owner); err != nil {
		return instances.NetStats{}, err
	}
	return instances.NetStats{}, nil
}

// Owners lists the owners that hold a slot, sorted.
func (n *FakeNetwork) Owners() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for o := range n.slots {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}

// Acquires counts the slots handed out so far.
func (n *FakeNetwork) Acquires() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.acquires
}

// AllowsPeers reports whether owner's slot was acquired allowing peers
// (false without a slot).
func (n *FakeNetwork) AllowsPeers(owner string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.slots[owner]
	return s != nil && s.allowPeers
}
