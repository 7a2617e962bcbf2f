//! Who may do what, as one table: role x action -> how far the role reaches (any resource, its
//! own organisation's, its own clinics', or none). Every admin handler asks [`authorize`] and
//! nothing else decides access.

pub use crate::auth::{AdminClaims, AdminRole};

/// Everything the admin API does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Register or rename an organisation.
    UpsertOrg,
    /// Register or rename a clinic.
    UpsertClinic,
    /// List an organisation's clinics.
    ListClinics,
    /// See a clinic's app and Stripe status.
    ViewClinic,
    /// Ask for the payment app on clinics.
    RequestEnablement,
    /// See enablement requests.
    ListEnablements,
    /// Approve or reject an enablement request.
    DecideEnablement,
    /// Turn the app off for a clinic.
    DisableApp,
    /// Link, re-link or remove the clinic's Stripe account.
    ManageStripe,
    /// Read the clinic's audit log.
    ViewAudit,
    /// Read the clinic's payment records and each one's history.
    ViewPayments,
    /// Refund a paid payment, in full or in part. A team member only while
    /// `payments.clinician_refund_window_hours` allows, and only what they requested.
    Refund,
    /// Read reports (totals by status, day and clinician; the CSV export) of a clinic.
    ViewReports,
    /// Read the payment records of every clinic of an organisation, in one list.
    ViewOrgPayments,
    /// Read the report over every clinic of an organisation.
    ViewOrgReports,
    /// Register, change and delete the platform's event endpoints; read their deliveries and
    /// replay one. The platform's own integration, so its operator's.
    ManageEvents,
    /// Turn callpay's own receipt e-mail on or off for a clinic.
    ManageReceipts,
}

/// How far a role reaches for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Not at all.
    No,
    /// Resources of the admin's own organisation.
    OwnOrg,
    /// The admin's own clinics.
    OwnClinic,
    /// In the admin's own clinics, only what they requested themselves (a clinician's own
    /// payments: the admin token's `sub` is the platform user id the join token carries too).
    OwnRequests,
    /// Any resource.
    Any,
}

use Reach::{Any, No, OwnClinic, OwnOrg, OwnRequests};

/// The matrix. Columns: org_admin, team_admin, team_member, platform_operator.
pub const MATRIX: &[(Action, [Reach; 4])] = &[
    (Action::UpsertOrg, [No, No, No, Any]),
    (Action::UpsertClinic, [No, No, No, Any]),
    (Action::ListClinics, [OwnOrg, No, No, Any]),
    (Action::ViewClinic, [OwnOrg, OwnClinic, OwnClinic, Any]),
    (Action::RequestEnablement, [OwnOrg, OwnClinic, No, No]),
    (Action::ListEnablements, [OwnOrg, No, No, Any]),
    (Action::DecideEnablement, [No, No, No, Any]),
    (Action::DisableApp, [OwnOrg, No, No, Any]),
    (Action::ManageStripe, [OwnOrg, OwnClinic, No, No]),
    (Action::ViewAudit, [OwnOrg, OwnClinic, No, Any]),
    // Payments are the clinic's business: the service desk sees none.
    (Action::ViewPayments, [OwnOrg, OwnClinic, OwnRequests, No]),
    // Money goes back by the clinic's own people: its admins, and the clinician who took it
    // (within the window). An org admin governs the clinics and reads their reports; the
    // service desk never touches payments.
    (Action::Refund, [No, OwnClinic, OwnRequests, No]),
    // Reports are about the clinic's money: its admins and the organisation's, not the desk.
    (Action::ViewReports, [OwnOrg, OwnClinic, No, No]),
    // Across the organisation: its admins only (a team admin reads each of their clinics).
    (Action::ViewOrgPayments, [OwnOrg, No, No, No]),
    (Action::ViewOrgReports, [OwnOrg, No, No, No]),
    // Where the platform hears about payments: set up by its operator, never by a clinic.
    (Action::ManageEvents, [No, No, No, Any]),
    // What the clinic tells its patients is the clinic's choice: its admins (the organisation's
    // too, as for its Stripe account), not the desk or a clinician.
    (Action::ManageReceipts, [OwnOrg, OwnClinic, No, No]),
];

/// The resource an action touches: its organisation and, if any, its clinic.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// The resource's organisation.
    pub org_id: Option<&'a str>,
    /// The resource's clinic.
    pub clinic_id: Option<&'a str>,
    /// Who requested it (a payment's clinician), where that decides access.
    pub requested_by: Option<&'a str>,
}

/// How far `who`'s role reaches for `action`, whatever the resource.
pub fn reach(who: &AdminClaims, action: Action) -> Reach {
    let column = match who.role {
        AdminRole::OrgAdmin => 0,
        AdminRole::TeamAdmin => 1,
        AdminRole::TeamMember => 2,
        AdminRole::PlatformOperator => 3,
    };
    MATRIX.iter().find(|(a, _)| *a == action).map_or(No, |(_, row)| row[column])
}

/// Whether `who` may do `action` on `scope`.
pub fn authorize(who: &AdminClaims, action: Action, scope: Scope<'_>) -> bool {
    match reach(who, action) {
        No => false,
        Any => true,
        OwnOrg => who.org_id.is_some() && scope.org_id.is_some() && who.org_id.as_deref() == scope.org_id,
        OwnClinic => own_clinic(who, scope),
        OwnRequests => own_clinic(who, scope) && scope.requested_by.is_some_and(|r| r == who.sub),
    }
}

fn own_clinic(who: &AdminClaims, scope: Scope<'_>) -> bool {
    scope.clinic_id.is_some_and(|c| who.clinic_ids.iter().any(|own| own == c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: AdminRole) -> AdminClaims {
        AdminClaims {
            typ: crate::auth::ADMIN_TYP.into(),
            sub: "a".into(),
            name: "A".into(),
            role,
            org_id: Some("o1".into()),
            clinic_ids: vec!["c1".into()],
            exp: 0,
        }
    }

    #[test]
    fn every_action_has_a_row_and_scopes_are_checked() {
        for action in [
            Action::UpsertOrg,
            Action::UpsertClinic,
            Action::ListClinics,
            Action::ViewClinic,
            Action::RequestEnablement,
            Action::ListEnablements,
            Action::DecideEnablement,
            Action::DisableApp,
            Action::ManageStripe,
            Action::ViewAudit,
            Action::ViewPayments,
            Action::Refund,
            Action::ViewReports,
            Action::ViewOrgPayments,
            Action::ViewOrgReports,
            Action::ManageEvents,
            Action::ManageReceipts,
        ] {
            assert!(MATRIX.iter().any(|(a, _)| *a == action), "{action:?} missing from the matrix");
        }
        let own = Scope { org_id: Some("o1"), clinic_id: Some("c1"), requested_by: None };
        let other = Scope { org_id: Some("o2"), clinic_id: Some("c9"), requested_by: None };
        assert!(authorize(&who(AdminRole::OrgAdmin), Action::ManageStripe, own));
        assert!(!authorize(&who(AdminRole::OrgAdmin), Action::ManageStripe, other));
        assert!(authorize(&who(AdminRole::TeamAdmin), Action::ManageStripe, own));
        assert!(!authorize(&who(AdminRole::TeamAdmin), Action::ManageStripe, other));
        assert!(!authorize(&who(AdminRole::TeamMember), Action::ManageStripe, own));
        assert!(!authorize(&who(AdminRole::PlatformOperator), Action::ManageStripe, own));
        assert!(authorize(&who(AdminRole::PlatformOperator), Action::DecideEnablement, other));
        let mut no_org = who(AdminRole::OrgAdmin);
        no_org.org_id = None;
        assert!(!authorize(&no_org, Action::ListClinics, Scope::default()));
        // A team member sees the payments they requested, in their own clinics only.
        let mine = Scope { requested_by: Some("a"), ..own };
        assert!(authorize(&who(AdminRole::TeamMember), Action::ViewPayments, mine));
        assert!(!authorize(&who(AdminRole::TeamMember), Action::ViewPayments, own));
        assert!(!authorize(
            &who(AdminRole::TeamMember),
            Action::ViewPayments,
            Scope { requested_by: Some("b"), ..own }
        ));
        assert!(!authorize(
            &who(AdminRole::TeamMember),
            Action::ViewPayments,
            Scope { requested_by: Some("a"), ..other }
        ));
        assert!(authorize(&who(AdminRole::TeamAdmin), Action::ViewPayments, own));
        assert!(!authorize(&who(AdminRole::PlatformOperator), Action::ViewPayments, own));
    }
}
