package tunnel

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Routes to other clusters live in a routing table of our own, consulted
// by one policy rule per family, so that the tunnel never replaces or
// removes a route it did not create: in our table there is no one else's
// route to collide with, and the node's own tables are left as they are.
// The rule comes before the main table's (priority 32766), so traffic to a
// range a peer may claim (brokerv1.CheckClaim, with the node's own networks
// protected) goes into the tunnel, encrypted, even where the main table
// has a wider route, such as a default route; an address outside every
// claim finds nothing in our table and falls through to the main table.

// MainTable is the kernel's main routing table. With it no rule is added:
// the routes go beside everyone else's, and one already there for the same
// range is reported, never replaced.
const MainTable = unix.RT_TABLE_MAIN

// DefaultRouteTable and DefaultRulePriority are the table of our routes
// and the priority of the rule that consults it (WireGuard's port number,
// and a priority just before the main table's).
const (
	DefaultRouteTable   = 51820
	DefaultRulePriority = 32000
)

// checkTable refuses the tables the kernel keeps for itself.
func checkTable(table, priority int) error {
	switch {
	case table < 1 || table == unix.RT_TABLE_DEFAULT || table == unix.RT_TABLE_LOCAL || table > 1<<31-1:
		return fmt.Errorf("route table %d: want a table of our own or %d (main); 253 (default) and 255 (local) are the kernel's", table, MainTable)
	case table != MainTable && (priority < 1 || priority >= 32766):
		return fmt.Errorf("rule priority %d must be 1-32765, before the main table's rule", priority)
	}
	return nil
}

var ruleFamilies = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

// ourRule is the rule consulting table at priority, for family.
func ourRule(family, table, priority int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family, rule.Table, rule.Priority = family, table, priority
	return rule
}

// ensureRules adds the rule consulting table, for each family, unless it
// is there already. Routes of ours left in the main table by a version
// that put them there are removed first: our protocol id on our device
// says they are ours.
func (r *reconciler) ensureRules(priority int, link netlink.Link) error {
	if r.table == MainTable {
		return nil
	}
	var errs []error
	old, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: MainTable, Protocol: r.proto, LinkIndex: link.Attrs().Index},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_OIF)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing routes of ours left in the main table: %w", err))
	}
	for _, rt := range old {
		if err := netlink.RouteDel(&rt); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s of ours left in the main table: %w", rt.Dst, err))
		}
	}
	for _, fam := range ruleFamilies {
		have, err := r.hasRule(fam, priority)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if have {
			continue
		}
		if err := netlink.RuleAdd(ourRule(fam, r.table, priority)); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("adding the rule 'pref %d lookup %d' (family %d): %w", priority, r.table, fam, err))
		}
	}
	return errors.Join(errs...)
}

// hasRule reports whether family has the rule consulting our table at
// priority, and nothing more particular (a selector would make it consult
// our table for some traffic only).
func (r *reconciler) hasRule(family, priority int) (bool, error) {
	rules, err := netlink.RuleList(family)
	if err != nil {
		return false, fmt.Errorf("listing rules (family %d): %w", family, err)
	}
	for _, rule := range rules {
		if rule.Table == r.table && rule.Priority == priority && rule.Src == nil && rule.Dst == nil && rule.Mark == 0 && rule.IifName == "" && rule.OifName == "" {
			return true, nil
		}
	}
	return false, nil
}

// removeRules removes the rules ensureRules added: the clean shutdown.
// Our table is empty by then (clear removed its routes).
func (r *reconciler) removeRules(priority int) error {
	if r.table == MainTable {
		return nil
	}
	var errs []error
	for _, fam := range ruleFamilies {
		for {
			have, err := r.hasRule(fam, priority)
			if err != nil {
				errs = append(errs, err)
				break
			}
			if !have {
				break
			}
			if err := netlink.RuleDel(ourRule(fam, r.table, priority)); err != nil {
				errs = append(errs, fmt.Errorf("removing the rule 'pref %d lookup %d' (family %d): %w", priority, r.table, fam, err))
				break
			}
		}
	}
	return errors.Join(errs...)
}
