package agent

import (
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Every write the controllers make comes back through an informer, and
// every event queues its key again. For a write the agent made itself the
// follow-up reconcile only re-reads what it wrote, often from a cache that
// has not shown the write yet, so it wrote again: a new import ran once
// for its ServiceImport, once for its derived Service, once per slice, and
// a new export once more for its own broker record, whose status write
// from the stale cache conflicted and retried. Those writes land while the
// other members import the same change, on the same CPUs.
//
// ownWrites remembers, per object the agent writes, the content hash of
// its last write (the hash annotation every such object carries). An
// added or updated object whose annotation is that hash holds what the
// agent wrote, so its event brings no input the reconcile did not have
// and queues nothing; any other change (someone else's, or a deletion)
// queues as before. The hash is remembered before the write is sent, since
// the watch often delivers the event before the client reads the response,
// and forgotten if the write fails. The agent's own deletes are
// remembered the same way, so that their events queue nothing either; a
// deletion by anyone else queues as before. A status the agent wrote changes no
// annotation, so its event is one of these too; a status someone else
// changes is put right at the object's next change.
type ownWrites struct{ m sync.Map } // object key → hash

func (w *ownWrites) intend(key, hash string) { w.m.Store(key, hash) }

// failed forgets a write that did not happen, unless a later one was
// intended meanwhile.
func (w *ownWrites) failed(key, hash string) { w.m.CompareAndDelete(key, hash) }

func (w *ownWrites) forget(key string) { w.m.Delete(key) }

// shows reports whether obj holds the agent's last write to it.
func (w *ownWrites) shows(key string, obj metav1.Object) bool {
	h, ok := w.m.Load(key)
	return ok && obj.GetAnnotations()[annotationHash] == h.(string)
}

// The keys of the objects the agent writes.
func recordWriteKey(name string) string      { return "record/" + name }
func importWriteKey(ns, name string) string  { return "import/" + ns + "/" + name }
func derivedWriteKey(ns, name string) string { return "derived/" + ns + "/" + name }
func sliceWriteKey(ns, name string) string   { return "slice/" + ns + "/" + name }

// deletedMark is what ownWrites holds for an object the agent is deleting
// (noted as the delete's hash, so a failed delete is forgotten as a failed
// write is); no content hash (hex) equals it.
const deletedMark = "deleted"

// gone forgets the object at key, deleted, and reports whether the agent
// deleted it itself: then the reconcile that did so had every input the
// event brings.
func (w *ownWrites) gone(key string) bool {
	h, ok := w.m.LoadAndDelete(key)
	return ok && h.(string) == deletedMark
}

// noted runs a write of the object at key with content hash, remembering
// it unless it fails.
func (w *ownWrites) noted(key, hash string, write func() error) error {
	w.intend(key, hash)
	err := write()
	if err != nil {
		w.failed(key, hash)
	}
	return err
}
