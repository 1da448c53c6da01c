package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// Implementation says which WireGuard device to use.
type Implementation string

const (
	// Auto uses the kernel device when the kernel has WireGuard and the
	// embedded userspace device otherwise.
	Auto Implementation = "auto"
	// Kernel requires the kernel's WireGuard.
	Kernel Implementation = "kernel"
	// Userspace embeds wireguard-go in this process.
	Userspace Implementation = "userspace"
)

// ParseImplementation parses the --wireguard-implementation flag.
func ParseImplementation(s string) (Implementation, error) {
	switch i := Implementation(s); i {
	case Auto, Kernel, Userspace:
		return i, nil
	}
	return "", fmt.Errorf("unknown WireGuard implementation %q: want auto, kernel or userspace", s)
}

// Device is an open WireGuard network interface. Whatever the
// implementation, it is configured and read through wgctrl; Device only
// creates and destroys it.
type Device struct {
	// Name is the interface name.
	Name string
	// Implementation is Kernel or Userspace, never Auto.
	Implementation Implementation
	// Offload is true when the userspace device negotiated TUN
	// segmentation offloads (IFF_VNET_HDR, batched reads); the kernel
	// device always counts as offloaded. Without it the userspace device
	// is about four times slower.
	Offload bool

	closeOnce sync.Once
	closeFn   func() error
	keepFn    func() error
}

// Close destroys the interface; its addresses and routes go with it.
func (d *Device) Close() error {
	var err error
	d.closeOnce.Do(func() { err = d.closeFn() })
	return err
}

// Keep lets go of the interface without destroying it, for the next
// tunnel process on this node (a restart or an upgrade of the pod): its
// addresses, routes and rules stay, so until the next process attaches
// the kernel drops what is routed into it instead of answering "no route"
// (TCP retransmits; connections survive). A kernel device keeps its peers
// and sessions too and goes on carrying traffic. The userspace device's
// TUN is made persistent and closed; its sessions end with this process,
// and the next one's first packet to a peer makes new ones.
func (d *Device) Keep() error {
	err := errors.New("the device was closed already")
	d.closeOnce.Do(func() { err = d.keepFn() })
	return err
}

// OpenDevice creates the WireGuard interface name with the given MTU, of
// the implementation asked for. A kernel device left by an earlier run is
// reused; a leftover interface of the other kind is deleted first.
func OpenDevice(name string, impl Implementation, mtu int, log *slog.Logger) (*Device, error) {
	if len(name) == 0 || len(name) > 15 {
		return nil, fmt.Errorf("interface name %q must have 1 to 15 characters", name)
	}
	switch impl {
	case Kernel:
		return openKernel(name, mtu)
	case Userspace:
		return openUserspace(name, mtu, log)
	case Auto:
		if l, err := netlink.LinkByName(name); err == nil && l.Type() == "tuntap" {
			// A userspace device the previous tunnel kept: take it over
			// rather than replace it with a kernel one.
			return openUserspace(name, mtu, log)
		}
		d, err := openKernel(name, mtu)
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, errNoKernelWireGuard) {
			return nil, err
		}
		log.Info("kernel has no WireGuard; embedding the userspace device", "device", name)
		return openUserspace(name, mtu, log)
	}
	return nil, fmt.Errorf("unknown WireGuard implementation %q", impl)
}

var errNoKernelWireGuard = errors.New("the kernel has no WireGuard support")

func openKernel(name string, mtu int) (*Device, error) {
	if l, err := netlink.LinkByName(name); err == nil && l.Type() != "wireguard" {
		if err := netlink.LinkDel(l); err != nil {
			return nil, fmt.Errorf("deleting leftover %s interface %s: %w", l.Type(), name, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = mtu
	err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs})
	switch {
	case err == nil, errors.Is(err, syscall.EEXIST):
	case errors.Is(err, syscall.EOPNOTSUPP), strings.Contains(err.Error(), "not supported"), strings.Contains(err.Error(), "Unknown device type"):
		return nil, fmt.Errorf("creating kernel WireGuard interface %s: %w (%v)", name, errNoKernelWireGuard, err)
	default:
		return nil, fmt.Errorf("creating kernel WireGuard interface %s: %w", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("finding interface %s: %w", name, err)
	}
	if err := netlink.LinkSetMTU(l, mtu); err != nil {
		return nil, fmt.Errorf("setting MTU of %s: %w", name, err)
	}
	return &Device{Name: name, Implementation: Kernel, Offload: true, closeFn: func() error {
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("deleting interface %s: %w", name, err)
		}
		return nil
	}, keepFn: func() error { return nil }}, nil
}

func openUserspace(name string, mtu int, log *slog.Logger) (*Device, error) {
	tdev, err := attachKept(name, mtu, log)
	if err != nil {
		return nil, err
	}
	if tdev == nil {
		if tdev, err = tun.CreateTUN(name, mtu); err != nil {
			return nil, fmt.Errorf("creating TUN interface %s: %w", name, err)
		}
	}
	// Persistent only when Keep says so: a crash or a clean stop removes
	// the interface, as a plain TUN would.
	if err := setPersist(tdev, false); err != nil {
		tdev.Close()
		return nil, err
	}
	offload := tdev.BatchSize() > 1
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), wgLogger(log.With("device", name)))
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("opening the UAPI socket of %s: %w", name, err)
	}
	ln, err := ipc.UAPIListen(name, f)
	if err != nil {
		f.Close()
		dev.Close()
		return nil, fmt.Errorf("listening on the UAPI socket of %s: %w", name, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	if !offload {
		log.Warn("TUN offloads not negotiated: the userspace device will be about 4x slower", "device", name)
	}
	return &Device{Name: name, Implementation: Userspace, Offload: offload, closeFn: func() error {
		ln.Close()
		dev.Close()
		return nil
	}, keepFn: func() error {
		ln.Close()
		err := setPersist(tdev, true)
		dev.Close()
		return err
	}}, nil
}

// attachKept attaches to the TUN interface name that a previous tunnel
// process kept (Device.Keep), with its addresses and routes; nil when
// there is none. Any other interface of that name is deleted: the
// embedded device needs the name.
func attachKept(name string, mtu int, log *slog.Logger) (tun.Device, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, nil
	}
	if l.Type() == "tuntap" {
		tdev, err := tun.CreateTUN(name, mtu)
		if err == nil {
			log.Info("attached to the TUN interface the previous tunnel kept; its routes carried on", "device", name)
			return tdev, nil
		}
		log.Warn("could not attach to the kept TUN interface; making a new one", "device", name, "err", err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return nil, fmt.Errorf("deleting leftover %s interface %s: %w", l.Type(), name, err)
	}
	return nil, nil
}

// setPersist sets the TUN's persist flag: a persistent TUN outlives its
// last open file, with its addresses and routes.
func setPersist(tdev tun.Device, on bool) error {
	nt, ok := tdev.(*tun.NativeTun)
	if !ok {
		return fmt.Errorf("the TUN device is a %T, not a Linux TUN", tdev)
	}
	// Through SyscallConn: Fd would put the file into blocking mode under
	// wireguard-go's poller.
	raw, err := nt.File().SyscallConn()
	if err != nil {
		return err
	}
	v := 0
	if on {
		v = 1
	}
	var ioErr error
	if err := raw.Control(func(fd uintptr) { ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v) }); err != nil {
		return err
	}
	if ioErr != nil {
		return fmt.Errorf("setting the TUN persist flag to %d: %w", v, ioErr)
	}
	return nil
}

// wgLogger adapts wireguard-go's printf logger to slog. Errors repeat once
// per packet when a peer is unreachable, so each message format is logged
// at most once a minute.
func wgLogger(log *slog.Logger) *device.Logger {
	var mu sync.Mutex
	last := map[string]time.Time{}
	return &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf: func(format string, args ...any) {
			mu.Lock()
			now := time.Now()
			if t, ok := last[format]; ok && now.Sub(t) < time.Minute {
				mu.Unlock()
				return
			}
			last[format] = now
			mu.Unlock()
			log.Warn(fmt.Sprintf(format, args...))
		},
	}
}

// linkUp brings the interface up with addr (a /32 or /128) as its only
// address of ours.
func linkUp(name string, addr net.IP) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("finding interface %s: %w", name, err)
	}
	if addr != nil {
		bits := 32
		if addr.To4() == nil {
			bits = 128
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: addr, Mask: net.CIDRMask(bits, bits)}}
		if err := netlink.AddrReplace(l, a); err != nil {
			return nil, fmt.Errorf("adding address %s to %s: %w", addr, name, err)
		}
		// The device is ours alone: an address left from an earlier pod
		// CIDR would answer for a range we no longer own.
		have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("listing addresses of %s: %w", name, err)
		}
		for _, h := range have {
			if !h.IP.Equal(addr) && h.IP.IsGlobalUnicast() {
				if err := netlink.AddrDel(l, &h); err != nil {
					return nil, fmt.Errorf("removing old address %s from %s: %w", h.IPNet, name, err)
				}
			}
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("bringing %s up: %w", name, err)
	}
	return l, nil
}
