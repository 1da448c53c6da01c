package setup

import (
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Every member's agent, xDS server and tunnel talk to the hub's apiserver.
// Without a FlowSchema of their own their requests fall into the hub's
// catch-all "service-accounts" schema, where one member flooding the hub
// (a bug, or a stolen credential) competes with everyone. The broker's
// FlowSchema classifies every request of a ServiceAccount of the broker
// namespace (all of a member's identities, and only theirs) into a
// priority level of their own, and distinguishes flows by user: each
// member identity's requests queue in its own shuffle-sharded queues, so a
// flood queues behind itself, the other members keep their share, and the
// hub's own controllers (other priority levels) keep theirs.

// FairnessPrefix starts the name of the broker's FlowSchema and
// PriorityLevelConfiguration (both cluster-scoped, one pair per broker
// namespace); FairnessName completes it.
const FairnessPrefix = "isthmus-broker-members-"

// FairnessName names the FlowSchema and PriorityLevelConfiguration of the
// broker in namespace ns.
func FairnessName(ns string) string { return FairnessPrefix + ns }

// membersMatchingPrecedence ranks the schema before the hub's catch-all
// "service-accounts" (9000) and "global-default" (9900) schemas, after
// the system ones (at most 1000): it matches only the broker namespace's
// ServiceAccounts, so it takes nothing from the hub's own components.
const membersMatchingPrecedence = 5000

// fairnessObjects are the broker's PriorityLevelConfiguration and
// FlowSchema. The level's share (nominalConcurrencyShares 20, as the
// hub's global-default level) is borrowed from idle levels and lent when
// idle; its queues (64, hands of 6) keep flows apart.
func fairnessObjects(ns string) (*flowcontrolv1.PriorityLevelConfiguration, *flowcontrolv1.FlowSchema) {
	name := FairnessName(ns)
	plc := &flowcontrolv1.PriorityLevelConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: flowcontrolv1.SchemeGroupVersion.String(), Kind: "PriorityLevelConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: partOf},
		Spec: flowcontrolv1.PriorityLevelConfigurationSpec{
			Type: flowcontrolv1.PriorityLevelEnablementLimited,
			Limited: &flowcontrolv1.LimitedPriorityLevelConfiguration{
				NominalConcurrencyShares: ptr(int32(20)),
				LendablePercent:          ptr(int32(50)),
				LimitResponse: flowcontrolv1.LimitResponse{
					Type: flowcontrolv1.LimitResponseTypeQueue,
					Queuing: &flowcontrolv1.QueuingConfiguration{
						Queues: 64, HandSize: 6, QueueLengthLimit: 50,
					},
				},
			},
		},
	}
	fs := &flowcontrolv1.FlowSchema{
		TypeMeta:   metav1.TypeMeta{APIVersion: flowcontrolv1.SchemeGroupVersion.String(), Kind: "FlowSchema"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: partOf},
		Spec: flowcontrolv1.FlowSchemaSpec{
			PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: name},
			MatchingPrecedence:         membersMatchingPrecedence,
			DistinguisherMethod:        &flowcontrolv1.FlowDistinguisherMethod{Type: flowcontrolv1.FlowDistinguisherMethodByUserType},
			Rules: []flowcontrolv1.PolicyRulesWithSubjects{{
				Subjects: []flowcontrolv1.Subject{{
					Kind:           flowcontrolv1.SubjectKindServiceAccount,
					ServiceAccount: &flowcontrolv1.ServiceAccountSubject{Namespace: ns, Name: "*"},
				}},
				ResourceRules: []flowcontrolv1.ResourcePolicyRule{{
					Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"},
					ClusterScope: true, Namespaces: []string{"*"},
				}},
				NonResourceRules: []flowcontrolv1.NonResourcePolicyRule{{
					Verbs: []string{"*"}, NonResourceURLs: []string{"*"},
				}},
			}},
		},
	}
	return plc, fs
}
