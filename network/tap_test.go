package network

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTAPCarriesGuestTraffic drives the production path with no VM: it
// speaks Ethernet on the slot's TAP fd as the guest's NIC would (virtio
// net header, GuestMAC, GuestIP), answers the slot's ARP for the guest,
// and pings the outside through the slot's NAT, the bridge and the
// masquerade. The echo reply must come back to the guest's address.
func TestTAPCarriesGuestTraffic(t *testing.T) {
	upstreamNS(t)
	m, _ := testManager(t, nil)
	s := acquire(t, m, "vm", SlotOptions{})
	tap, err := s.OpenTAP()
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	f := pollable(t, tap)
	defer f.Close()

	guestMAC, _ := net.ParseMAC(GuestMAC)
	gwMAC, _ := net.ParseMAC(GatewayMAC)
	guestIP := net.ParseIP(GuestIP).To4()
	target := net.ParseIP(upstreamIP).To4()
	const vnetHdr = 10 // struct virtio_net_hdr, the TAP's default size

	send := func(frame []byte) {
		t.Helper()
		if _, err := f.Write(append(make([]byte, vnetHdr), frame...)); err != nil {
			t.Fatalf("write to TAP: %v", err)
		}
	}
	ping := icmpEcho(guestIP, target, 0x5a79, 1)
	send(ether(gwMAC, guestMAC, 0x0800, ping))

	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	f.SetReadDeadline(deadline)
	for {
		n, err := f.Read(buf)
		if err != nil {
			t.Fatalf("no echo reply from %s through the TAP: %v", target, err)
		}
		fr := buf[vnetHdr:n]
		if len(fr) < 14 {
			continue
		}
		etype := binary.BigEndian.Uint16(fr[12:14])
		switch {
		case etype == 0x0806 && len(fr) >= 42 && binary.BigEndian.Uint16(fr[20:22]) == 1 && bytes.Equal(fr[38:42], guestIP):
			// The slot asks who has the guest's address: answer as the NIC.
			send(ether(fr[6:12], guestMAC, 0x0806, arpReply(guestMAC, guestIP, fr[22:28], fr[28:32])))
		case etype == 0x0800 && len(fr) >= 14+28:
			ip := fr[14:]
			if ip[9] == 1 && bytes.Equal(ip[12:16], target) && bytes.Equal(ip[16:20], guestIP) && ip[20] == 0 {
				if !bytes.Equal(fr[0:6], guestMAC) || !bytes.Equal(fr[6:12], gwMAC) {
					t.Fatalf("reply frame %x → %x, want %s → %s", fr[6:12], fr[0:6], gwMAC, guestMAC)
				}
				st, err := m.Stats("vm")
				if err != nil || st.TxBytes == 0 || st.RxBytes == 0 {
					t.Fatalf("TAP stats after a ping: %+v, %v", st, err)
				}
				return
			}
		}
	}
}

// pollable returns a non-blocking duplicate of a TAP fd that honours read
// deadlines.
func pollable(t *testing.T, f *os.File) *os.File {
	t.Helper()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dup int
	var derr error
	rc.Control(func(fd uintptr) { dup, derr = unix.Dup(int(fd)) })
	if derr != nil {
		t.Fatal(derr)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(dup), "tap-dup")
}

func ether(dst, src net.HardwareAddr, etype uint16, payload []byte) []byte {
	fr := make([]byte, 14, 14+len(payload))
	copy(fr[0:6], dst)
	copy(fr[6:12], src)
	binary.BigEndian.PutUint16(fr[12:14], etype)
	return append(fr, payload...)
}

func arpReply(mac net.HardwareAddr, ip net.IP, toMAC, toIP []byte) []byte {
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:2], 1)      // Ethernet
	binary.BigEndian.PutUint16(p[2:4], 0x0800) // IPv4
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:8], 2) // reply
	copy(p[8:14], mac)
	copy(p[14:18], ip)
	copy(p[18:24], toMAC)
	copy(p[24:28], toIP)
	return p
}

func icmpEcho(src, dst net.IP, id, seq uint16) []byte {
	icmp := make([]byte, 8+32)
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:6], id)
	binary.BigEndian.PutUint16(icmp[6:8], seq)
	copy(icmp[8:], "zygote network tap test payload!")
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+len(icmp)))
	ip[8] = 64 // TTL
	ip[9] = 1  // ICMP
	copy(ip[12:16], src)
	copy(ip[16:20], dst)
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip))
	return append(ip, icmp...)
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + sum>>16
	}
	return ^uint16(sum)
}
