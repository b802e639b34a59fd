//! The keyboard-interactive login (RFC 4256) as a small state machine:
//! a first prompt takes a pasted ID token or an empty answer; an empty
//! answer starts the device authorization grant (RFC 8628) and a second
//! prompt shows the URL and user code while the gateway polls in the
//! background.
//!
//! The first prompt's text contains the word "token" so scripts driving
//! `SSH_ASKPASS` can recognise it. A failure is shown as the instruction of
//! one last round with no prompts, then the attempt is rejected.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::identity::{IdentityError, OidcIssuer, Principal};

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
        /// Who.
        principal: Principal,
        /// `token` or `device_flow`.
        method: &'static str,
    },
    /// Reject this attempt (the failure was shown already).
    Reject,
}

/// A failure to audit and show.
#[derive(Debug)]
pub struct LoginFailure {
    /// `token` or `device_flow`.
    pub method: &'static str,
    /// The error.
    pub error: IdentityError,
}

enum Step {
    Start,
    AskedToken,
    DeviceShown {
        url: String,
        user_code: String,
        poll: JoinHandle<Result<Principal, IdentityError>>,
    },
    Failed,
}

/// One connection's login state.
pub struct Login {
    issuer: Arc<OidcIssuer>,
    step: Step,
}

impl Drop for Login {
    fn drop(&mut self) {
        if let Step::DeviceShown { poll, .. } = &self.step {
            poll.abort();
        }
    }
}

impl Login {
    /// A login against `issuer`.
    pub fn new(issuer: Arc<OidcIssuer>) -> Login {
        Login {
            issuer,
            step: Step::Start,
        }
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
                    instructions: String::new(),
                    prompts: vec![(TOKEN_PROMPT.to_string(), false)],
                },
                None,
            );
        };
        let answer = answers.into_iter().next().unwrap_or_default();
        match std::mem::replace(&mut self.step, Step::Failed) {
            Step::Start | Step::Failed => (LoginReply::Reject, None),
            Step::AskedToken if !answer.trim().is_empty() => {
                match self.issuer.validate_id_token(&answer).await {
                    Ok(principal) => (
                        LoginReply::Accept {
                            principal,
                            method: "token",
                        },
                        None,
                    ),
                    Err(error) => self.fail("token", error),
                }
            }
            Step::AskedToken => match self.issuer.start_device_authorization().await {
                Ok(authorization) => {
                    let url = authorization.url_to_show().to_string();
                    let user_code = authorization.user_code.clone();
                    let issuer = self.issuer.clone();
                    let poll =
                        tokio::spawn(async move { issuer.poll_device_token(&authorization).await });
                    let prompt = device_prompt(&url, &user_code, false);
                    self.step = Step::DeviceShown {
                        url,
                        user_code,
                        poll,
                    };
                    (
                        LoginReply::Ask {
                            instructions: String::new(),
                            prompts: vec![(prompt, true)],
                        },
                        None,
                    )
                }
                Err(error) => self.fail("device_flow", error),
            },
            Step::DeviceShown {
                url,
                user_code,
                mut poll,
            } => match tokio::time::timeout(DEVICE_WAIT_PER_ANSWER, &mut poll).await {
                Err(_still_polling) => {
                    let prompt = device_prompt(&url, &user_code, true);
                    self.step = Step::DeviceShown {
                        url,
                        user_code,
                        poll,
                    };
                    (
                        LoginReply::Ask {
                            instructions: String::new(),
                            prompts: vec![(prompt, true)],
                        },
                        None,
                    )
                }
                Ok(Ok(Ok(principal))) => (
                    LoginReply::Accept {
                        principal,
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
            },
        }
    }

    fn fail(
        &mut self,
        method: &'static str,
        error: IdentityError,
    ) -> (LoginReply, Option<LoginFailure>) {
        self.step = Step::Failed;
        (
            LoginReply::Ask {
                instructions: error.user_message(),
                prompts: Vec::new(),
            },
            Some(LoginFailure { method, error }),
        )
    }

    fn reset(&mut self) {
        if let Step::DeviceShown { poll, .. } = &self.step {
            poll.abort();
        }
        self.step = Step::Start;
    }
}

fn device_prompt(url: &str, user_code: &str, again: bool) -> String {
    let lead = if again {
        "Still waiting for the browser login. "
    } else {
        ""
    };
    format!(
        "{lead}To log in, open {url} in your browser and confirm the code {user_code}.\n\
         Then press Enter: "
    )
}
