//! Where a session goes: `[login@]container`, as an SSH user name (or a
//! web console form, or `portcullis attach`) names it. Parsed once, when
//! the caller authenticates ([`super::Destination::parse`]).

use crate::config::valid_name;

/// Where the user wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Login inside the container.
    pub login: String,
    /// Container name.
    pub container: String,
}

/// Why an SSH user name is not a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not of the form `[login@]container`.
    #[error("user name is not of the form [login@]container")]
    Shape,
    /// The login is not a valid account name.
    #[error("invalid login name")]
    Login,
    /// The container name is not valid.
    #[error("invalid container name")]
    Container,
}

impl Target {
    /// Parses `user` (the SSH user name); a missing login is `default_login`.
    ///
    /// # Errors
    /// [`TargetError`] when a part is missing or not a valid name
    /// ([`valid_name`]: `[A-Za-z0-9_.-]`, at most 64 bytes).
    pub fn parse(user: &str, default_login: &str) -> Result<Target, TargetError> {
        let (login, container) = match user.split_once('@') {
            None => (default_login, user),
            Some((login, container)) => (login, container),
        };
        if container.contains('@') {
            return Err(TargetError::Shape);
        }
        if !valid_name(login) {
            return Err(TargetError::Login);
        }
        if !valid_name(container) {
            return Err(TargetError::Container);
        }
        Ok(Target {
            login: login.to_string(),
            container: container.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(
            Target::parse("web1", "root"),
            Ok(Target {
                login: "root".into(),
                container: "web1".into()
            })
        );
        assert_eq!(
            Target::parse("app@web1", "root"),
            Ok(Target {
                login: "app".into(),
                container: "web1".into()
            })
        );
    }

    #[test]
    fn refuses_hostile_names() {
        assert_eq!(Target::parse("a@b@c", "root"), Err(TargetError::Shape));
        assert_eq!(Target::parse("@web1", "root"), Err(TargetError::Login));
        assert_eq!(Target::parse("root@", "root"), Err(TargetError::Container));
        assert_eq!(
            Target::parse("../../etc", "root"),
            Err(TargetError::Container)
        );
        assert_eq!(Target::parse("-oProxy@x", "root"), Err(TargetError::Login));
        assert_eq!(
            Target::parse("a;reboot", "root"),
            Err(TargetError::Container)
        );
        assert_eq!(
            Target::parse(&"x".repeat(10_000), "root"),
            Err(TargetError::Container)
        );
    }
}
