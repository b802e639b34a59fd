//! The keyboard-interactive login (RFC 4256) as a small state machine:
//! a first prompt takes a pasted ID token or an empty answer; an empty
//! answer starts the device authorization grant (RFC 8628) and a second
//! prompt shows the URL and user code while the gateway polls in the
//! background.
//!
//! Each device authorization is taken from the listener's budget first
//! ([`crate::throttle::DeviceAuthorizationBudget`]: per connection, and
//! per source over a window), so a client looping keyboard-interactive
//! cannot spend the identity provider's rate limit for everyone (review
//! finding M4).
//!
//! The first prompt's text contains the word "token" so scripts driving
//! `SSH_ASKPASS` can recognise it. A failure is shown as the instruction of
//! one last round with no prompts, then the attempt is rejected.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::identity::{DeviceAuthorization, IdentityError, Issuers, LoginTokens};
use crate::throttle::{ConnectionDeviceBudget, DeviceAuthorizationBudget};

/// The first prompt.
pub const TOKEN_PROMPT: &str = "Paste a token, or press Enter to log in with your browser: ";

/// How long one Enter at the device prompt waits for the browser login
/// before asking again.
const DEVICE_WAIT_PER_ANSWER: Duration = Duration::from_secs(15);

/// What to send the client next.
#[derive(Debug)]
pub enum LoginReply {
    /// Another round: instructions and `(prompt, echo)` pairs.
    Ask {
        /// Instruction text (may be empty).
        instructions: String,
        /// Prompts with their echo flag.
        prompts: Vec<(String, bool)>,
    },
    /// The user is authenticated.
    Accept {
        /// Who, and the refresh token when the IdP gave one.
        tokens: LoginTokens,
        /// `token` or `device_flow`.
        method: &'static str,
    },
    /// Reject this attempt (the failure was shown already).
    Reject,
}

/// A failure to audit (it was shown already).
#[derive(Debug)]
pub struct LoginFailure {
    /// `token` or `device_flow`.
    pub method: &'static str,
    /// The full reason, for the audit log.
    pub reason: String,
}

enum Step {
    Start,
    AskedToken,
    DeviceShown {
        shown: DeviceShown,
        poll: JoinHandle<Result<LoginTokens, IdentityError>>,
    },
    Failed,
}

/// What the device prompt shows.
struct DeviceShown {
    url: String,
    user_code: String,
    qr: String,
    expires_at: tokio::time::Instant,
}

/// One connection's login state.
pub struct Login {
    issuers: Arc<Issuers>,
    step: Step,
    notice: Option<String>,
    /// The listener's budget, this connection's source and its share.
    budget: Option<(
        Arc<DeviceAuthorizationBudget>,
        IpAddr,
        ConnectionDeviceBudget,
    )>,
}

impl Drop for Login {
    fn drop(&mut self) {
        if let Step::DeviceShown { poll, .. } = &self.step {
            poll.abort();
        }
    }
}

impl Login {
    /// A login against `issuers` (a pasted token goes to the issuer its
    /// `iss` names; the device flow uses the default issuer).
    pub fn new(issuers: Arc<Issuers>) -> Login {
        Login {
            issuers,
            step: Step::Start,
            notice: None,
            budget: None,
        }
    }

    /// This login taking each device authorization from `budget` for a
    /// connection from `addr` (its share lasts as long as the connection:
    /// a new keyboard-interactive attempt does not renew it).
    pub fn with_device_budget(
        mut self,
        budget: Arc<DeviceAuthorizationBudget>,
        addr: IpAddr,
    ) -> Login {
        let share = budget.connection();
        self.budget = Some((budget, addr, share));
        self
    }

    /// Takes one device authorization from the budget; the refusal's user
    /// message and full reason when none is left.
    fn spend_device_authorization(&mut self) -> Result<(), (String, String)> {
        let Some((budget, addr, share)) = &mut self.budget else {
            return Ok(());
        };
        budget.try_start(*addr, share).map_err(|e| {
            (
                e.user_message(),
                format!("device authorization refused: {e}"),
            )
        })
    }

    /// Shows `text` as the instructions of the next first round (e.g. why
    /// a bound key was not accepted).
    pub fn set_notice(&mut self, text: String) {
        self.notice = Some(text);
    }

    /// Advances with the client's answers (`None` when a new
    /// keyboard-interactive attempt starts). A failure comes back as the
    /// second value, to be audited.
    pub async fn advance(
        &mut self,
        answers: Option<Vec<String>>,
    ) -> (LoginReply, Option<LoginFailure>) {
        let Some(answers) = answers else {
            self.reset();
            self.step = Step::AskedToken;
            return (
                LoginReply::Ask {
                    instructions: self.notice.take().unwrap_or_default(),
                    prompts: vec![(TOKEN_PROMPT.to_string(), false)],
                },
                None,
            );
        };
        let answer = answers.into_iter().next().unwrap_or_default();
        match std::mem::replace(&mut self.step, Step::Failed) {
            Step::Start | Step::Failed => (LoginReply::Reject, None),
            Step::AskedToken if !answer.trim().is_empty() => {
                match self.issuers.validate_id_token(&answer).await {
                    Ok(id_token) => (
                        LoginReply::Accept {
                            tokens: LoginTokens {
                                id_token,
                                refresh_token: None,
                            },
                            method: "token",
                        },
                        None,
                    ),
                    Err(error) => self.fail("token", error),
                }
            }
            Step::AskedToken => {
                if let Err((shown, reason)) = self.spend_device_authorization() {
                    return self.fail_with("device_flow", shown, reason);
                }
                match self
                    .issuers
                    .default_issuer()
                    .start_device_authorization()
                    .await
                {
                    Ok(authorization) => {
                        let shown = DeviceShown::of(&authorization);
                        let issuer = self.issuers.default_issuer().clone();
                        let poll =
                            tokio::spawn(
                                async move { issuer.poll_device_token(&authorization).await },
                            );
                        let prompt = shown.prompt(false);
                        self.step = Step::DeviceShown { shown, poll };
                        (
                            LoginReply::Ask {
                                instructions: String::new(),
                                prompts: vec![(prompt, true)],
                            },
                            None,
                        )
                    }
                    Err(error) => self.fail("device_flow", error),
                }
            }
            Step::DeviceShown { shown, mut poll } => {
                match tokio::time::timeout(DEVICE_WAIT_PER_ANSWER, &mut poll).await {
                    Err(_still_polling) => {
                        let prompt = shown.prompt(true);
                        self.step = Step::DeviceShown { shown, poll };
                        (
                            LoginReply::Ask {
                                instructions: String::new(),
                                prompts: vec![(prompt, true)],
                            },
                            None,
                        )
                    }
                    Ok(Ok(Ok(tokens))) => (
                        LoginReply::Accept {
                            tokens,
                            method: "device_flow",
                        },
                        None,
                    ),
                    Ok(Ok(Err(error))) => self.fail("device_flow", error),
                    Ok(Err(join_error)) => self.fail(
                        "device_flow",
                        IdentityError::DeviceFlow(crate::identity::DeviceFlowError::Request(
                            join_error.to_string(),
                        )),
                    ),
                }
            }
        }
    }

    fn fail(
        &mut self,
        method: &'static str,
        error: IdentityError,
    ) -> (LoginReply, Option<LoginFailure>) {
        self.fail_with(method, error.user_message(), error.to_string())
    }

    fn fail_with(
        &mut self,
        method: &'static str,
        shown: String,
        reason: String,
    ) -> (LoginReply, Option<LoginFailure>) {
        self.step = Step::Failed;
        (
            LoginReply::Ask {
                instructions: shown,
                prompts: Vec::new(),
            },
            Some(LoginFailure { method, reason }),
        )
    }

    fn reset(&mut self) {
        if let Step::DeviceShown { poll, .. } = &self.step {
            poll.abort();
        }
        self.step = Step::Start;
    }
}

impl DeviceShown {
    fn of(a: &DeviceAuthorization) -> DeviceShown {
        DeviceShown {
            url: a.url_to_show().to_string(),
            user_code: a.user_code.clone(),
            qr: a
                .verification_uri_complete
                .as_deref()
                .map(qr_code)
                .unwrap_or_default(),
            expires_at: a.expires_at,
        }
    }

    /// The device prompt (RFC 8628 §3.3): the URL, the code, a QR code of
    /// `verification_uri_complete` (§3.3.1) and how long the code is valid.
    fn prompt(&self, again: bool) -> String {
        let left = self
            .expires_at
            .saturating_duration_since(tokio::time::Instant::now());
        let lead = if again {
            "Still waiting for the browser login. "
        } else {
            ""
        };
        format!(
            "{qr}{lead}To log in, open {url} in your browser (or scan the QR code) and confirm \
             the code {code}.\nThe code is valid for {validity}.\nThen press Enter: ",
            qr = self.qr,
            url = self.url,
            code = self.user_code,
            validity = human_minutes(left),
        )
    }
}

/// `text` as a QR code drawn with Unicode half blocks (two modules per
/// character cell), light on dark so it scans on dark terminals; empty when
/// it does not fit a QR code.
pub(crate) fn qr_code(text: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let mut drawn = code
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build();
            drawn.push('\n');
            drawn
        }
        Err(_) => String::new(),
    }
}

/// `d` as "N minutes" / "N seconds" for prompts.
fn human_minutes(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    if secs >= 120 {
        format!("{} minutes", (secs + 30) / 60)
    } else {
        format!("{secs} seconds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qr_code_is_drawn_with_half_blocks() {
        let qr = qr_code("http://127.0.0.1:1/device?user_code=ABCD-EFGH");
        assert!(qr.lines().count() > 10);
        assert!(qr.contains('▀') || qr.contains('▄'));
        assert!(qr_code(&"x".repeat(5000)).is_empty());
    }

    #[test]
    fn validity_reads_well() {
        assert_eq!(human_minutes(Duration::from_secs(300)), "5 minutes");
        assert_eq!(human_minutes(Duration::from_millis(299_400)), "5 minutes");
        assert_eq!(human_minutes(Duration::from_secs(59)), "59 seconds");
    }
}
