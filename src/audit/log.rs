//! The one path that writes audit events ([`AuditLog`]): each event is
//! appended to the hash chain in the database (with a session's row when
//! it starts or ends, in the same transaction), then exported and logged.
//! Never signs (that is [`super::AuditSigner`]) and never decides whether
//! an action may go ahead: a caller that cannot record must refuse.

use std::sync::Arc;

use super::{AuditEvent, export};
use crate::store::{
    AuditRow, NewAuditRow, NewSession, RequestDecision, SessionEnd, Store, StoreError,
};

/// Who and where an event is about.
#[derive(Debug, Clone, Default)]
pub struct AuditSubject<'a> {
    /// Session id.
    pub session_id: Option<&'a str>,
    /// Principal subject.
    pub principal: Option<&'a str>,
    /// Client address.
    pub client_addr: Option<&'a str>,
}

/// Writes audit events to the store.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Store,
    export: Option<Arc<export::Export>>,
}

impl AuditLog {
    /// An audit log on `store`.
    pub fn new(store: Store) -> AuditLog {
        AuditLog {
            store,
            export: None,
        }
    }

    /// Also writes every event as a JSON line to `target` (a file path,
    /// appended to, or `-` for stdout); see [`export`] for the schema.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn with_export(mut self, target: &str) -> std::io::Result<AuditLog> {
        self.export = Some(Arc::new(export::Export::open(target)?));
        Ok(self)
    }

    /// Appends `event`; returns its sequence number. Callers must not go on
    /// with the action when this fails.
    ///
    /// # Errors
    /// [`StoreError`] when the database cannot take the event.
    pub async fn record(
        &self,
        subject: &AuditSubject<'_>,
        event: &AuditEvent,
    ) -> Result<i64, StoreError> {
        let detail = event.detail().to_string();
        let row = self
            .store
            .append_audit(&new_row(subject, event, &detail))
            .await?;
        Ok(self.published(row, subject, event))
    }

    /// Inserts the `running` row of a new session and appends `event` (its
    /// start) in one transaction ([`Store::insert_session_audited`]), so
    /// both are committed before the caller starts the session; returns the
    /// event's sequence number. Callers must not start the session when
    /// this fails.
    ///
    /// # Errors
    /// [`StoreError`]; then neither the row nor the event was written.
    pub async fn record_session_start(
        &self,
        subject: &AuditSubject<'_>,
        event: &AuditEvent,
        session: &NewSession<'_>,
    ) -> Result<i64, StoreError> {
        let detail = event.detail().to_string();
        let row = self
            .store
            .insert_session_audited(session, &new_row(subject, event, &detail))
            .await?;
        Ok(self.published(row, subject, event))
    }

    /// Closes the session row `id` with `end` and appends `event` (its end)
    /// in one transaction ([`Store::end_session_audited`]); returns the
    /// event's sequence number.
    ///
    /// # Errors
    /// [`StoreError`]; then neither change was written.
    pub async fn record_session_end(
        &self,
        subject: &AuditSubject<'_>,
        event: &AuditEvent,
        id: &str,
        end: &SessionEnd<'_>,
    ) -> Result<i64, StoreError> {
        let detail = event.detail().to_string();
        let row = self
            .store
            .end_session_audited(id, end, &new_row(subject, event, &detail))
            .await?;
        Ok(self.published(row, subject, event))
    }

    /// Appends `event` inside the open decision `decision` (issue 12): it
    /// is committed with the step it records, or not at all. Call
    /// [`AuditLog::published_rows`] with what the commit returns.
    ///
    /// # Errors
    /// [`StoreError`]; the caller must drop the decision (nothing is
    /// written).
    pub async fn record_in(
        &self,
        decision: &mut RequestDecision,
        subject: &AuditSubject<'_>,
        event: &AuditEvent,
    ) -> Result<(), StoreError> {
        let detail = event.detail().to_string();
        decision
            .append_audit(&new_row(subject, event, &detail))
            .await
    }

    /// Exports and logs the rows a committed decision wrote.
    pub fn published_rows(&self, rows: &[AuditRow]) {
        for row in rows {
            if let Some(export) = &self.export
                && let Err(e) = export.write(row)
            {
                tracing::error!(error = %e, "cannot export audit event {}", row.id);
            }
            tracing::info!(
                audit_id = row.id,
                kind = %row.kind,
                outcome = %row.outcome,
                principal = row.principal.as_deref(),
                detail = %row.detail,
                "audit"
            );
        }
    }

    /// Exports and logs a row just written; returns its sequence number.
    fn published(&self, row: AuditRow, subject: &AuditSubject<'_>, event: &AuditEvent) -> i64 {
        let id = row.id;
        if let Some(export) = &self.export {
            // The database is the record; a failed export is logged, never
            // a reason to lose or refuse the event.
            if let Err(e) = export.write(&row) {
                tracing::error!(error = %e, "cannot export audit event {id}");
            }
        }
        tracing::info!(
            audit_id = id,
            kind = event.kind(),
            outcome = event.outcome(),
            session_id = subject.session_id,
            principal = subject.principal,
            detail = %row.detail,
            "audit"
        );
        id
    }
}

/// The store row of `event` about `subject`, with `detail` its JSON text.
fn new_row<'a>(
    subject: &AuditSubject<'a>,
    event: &'a AuditEvent,
    detail: &'a str,
) -> NewAuditRow<'a> {
    NewAuditRow {
        kind: event.kind(),
        outcome: event.outcome(),
        session_id: subject.session_id,
        principal: subject.principal,
        client_addr: subject.client_addr,
        detail,
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, for echoing hostile
/// input into audit events and messages.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
