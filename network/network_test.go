package network

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

func TestGuestReachesUpstreamAndPublishedPortAnswers(t *testing.T) {
	up := upstreamNS(t)
	m, _ := testManager(t, nil)
	s := acquire(t, m, "web", SlotOptions{Publish: []Port{
		{HostPort: 18080, GuestPort: guestPort},
		{HostPort: 18081, GuestPort: guestPort, Protocol: UDP},
	}})
	guest := testGuest(t, m, "web")
	udpEcho(t, guest, guestPort)

	_, subnet, _ := net.ParseCIDR(DefaultSubnet)
	if !subnet.Contains(s.IP()) {
		t.Fatalf("slot address %s not in %s", s.IP(), subnet)
	}
	if s.MAC() != GuestMAC || s.Network() != DefaultNetworkName {
		t.Fatalf("slot reports mac %s network %s", s.MAC(), s.Network())
	}
	body, err := get(guest, "http://"+upstreamHTTP+"/")
	if err != nil {
		t.Fatalf("guest → upstream: %v", err)
	}
	wantContains(t, body, "upstream")
	for _, c := range []struct{ name, ns, url string }{
		{"host → slot address", "", fmt.Sprintf("http://%s:%d/", s.IP(), guestPort)},
		{"host → published port on loopback", "", "http://127.0.0.1:18080/"},
		{"host → published port on its address", "", "http://" + daemonIP + ":18080/"},
		{"outside → published port", up, "http://" + daemonIP + ":18080/"},
	} {
		body, err := get(c.ns, c.url)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		wantContains(t, body, "web")
	}
	for _, c := range []struct{ name, ns, addr string }{
		{"host → published UDP port", "", daemonIP + ":18081"},
		{"outside → published UDP port", up, daemonIP + ":18081"},
	} {
		if got, err := udpRoundTrip(c.ns, c.addr, c.name); err != nil || got != c.name {
			t.Fatalf("%s: %q, %v", c.name, got, err)
		}
	}
}

// udpEcho answers every datagram on port in the namespace at path.
func udpEcho(t testing.TB, path string, port int) {
	t.Helper()
	var pc net.PacketConn
	if err := inNS(path, func() (err error) {
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func udpRoundTrip(ns, addr, msg string) (string, error) {
	c, err := dialIn(context.Background(), ns, "udp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for range 3 { // UDP may lose the first datagram while ARP resolves
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", fmt.Errorf("no UDP answer from %s", addr)
}

func TestSlotsAreIsolatedUnlessBothAllowPeers(t *testing.T) {
	upstreamNS(t)
	m, _ := testManager(t, nil)
	a := acquire(t, m, "a", SlotOptions{})
	acquire(t, m, "b", SlotOptions{})
	c := acquire(t, m, "c", SlotOptions{AllowPeers: true})
	d := acquire(t, m, "d", SlotOptions{AllowPeers: true})
	ga, gb, gc, _ := testGuest(t, m, "a"), testGuest(t, m, "b"), testGuest(t, m, "c"), testGuest(t, m, "d")

	if !blocked(gb, fmt.Sprintf("http://%s:%d/", a.IP(), guestPort)) {
		t.Fatal("guest b reached guest a though neither allows peers")
	}
	if !blocked(gc, fmt.Sprintf("http://%s:%d/", a.IP(), guestPort)) {
		t.Fatal("guest c (allows peers) reached guest a (isolated)")
	}
	body, err := get(gc, fmt.Sprintf("http://%s:%d/", d.IP(), guestPort))
	if err != nil {
		t.Fatalf("guest c → guest d, both allowing peers: %v", err)
	}
	wantContains(t, body, "d")
	// The isolated ones still reach the outside and the host reaches them.
	if _, err := get(ga, "http://"+upstreamHTTP+"/"); err != nil {
		t.Fatalf("isolated guest → upstream: %v", err)
	}
	if body, err := get("", fmt.Sprintf("http://%s:%d/", c.IP(), guestPort)); err != nil || body != "c" {
		t.Fatalf("host → guest c: %q, %v", body, err)
	}
}

func TestTwoGuestsWithTheSameAddressBothWork(t *testing.T) {
	upstreamNS(t)
	m, _ := testManager(t, nil)
	a := acquire(t, m, "a", SlotOptions{})
	b := acquire(t, m, "b", SlotOptions{})
	if a.IP().Equal(b.IP()) {
		t.Fatalf("two slots share address %s", a.IP())
	}
	for _, o := range []struct {
		name string
		s    *Slot
	}{{"a", a}, {"b", b}} {
		g := testGuest(t, m, o.name)
		if _, err := get(g, "http://"+upstreamHTTP+"/"); err != nil {
			t.Fatalf("guest %s → upstream: %v", o.name, err)
		}
	}
	for _, o := range []struct {
		name string
		s    *Slot
	}{{"a", a}, {"b", b}} {
		body, err := get("", fmt.Sprintf("http://%s:%d/", o.s.IP(), guestPort))
		if err != nil || body != o.name {
			t.Fatalf("host → %s at %s: %q, %v", o.name, o.s.IP(), body, err)
		}
	}
}

func TestConnectionSurvivesAnotherSlot(t *testing.T) {
	upstreamNS(t)
	m, _ := testManager(t, nil)
	acquire(t, m, "a", SlotOptions{})
	g := testGuest(t, m, "a")
	c, err := dialIn(context.Background(), g, "tcp", upstreamEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: %q, %v", msg, buf, err)
		}
	}
	echo("before")
	acquire(t, m, "b", SlotOptions{Publish: []Port{{HostPort: 18090, GuestPort: 80}}})
	echo("after")
	if err := m.Release(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	echo("after-release")
}
