//! Error messages: each names what failed once, and leaves its cause to `source()`, so
//! that a reporter printing the chain ("a: b: c") does not print the cause twice.

use std::{error::Error as StdError, io};
use switchboard::{Error, client::ConnectError, proto::ProtocolError, upgrade::AcceptError};

/// Fails when an error's message repeats the message of its source.
fn assert_cause_printed_once(error: &dyn StdError) {
    let mut current = error;
    while let Some(source) = current.source() {
        let (message, cause) = (current.to_string(), source.to_string());
        assert!(
            !message.contains(&cause),
            "{message:?} repeats its source {cause:?}"
        );
        current = source;
    }
}

fn io_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer")
}

#[test]
fn wrapped_causes_are_left_to_source() {
    let invalid_uri = "http://[".parse::<http::Uri>().unwrap_err();
    let errors: [Box<dyn StdError>; 5] = [
        Box::new(Error::from(io_error())),
        Box::new(Error::from(ProtocolError::UnmaskedFrame)),
        Box::new(ConnectError::from(io_error())),
        Box::new(ConnectError::from(invalid_uri)),
        Box::new(AcceptError::from(io_error())),
    ];
    for error in &errors {
        assert!(error.source().is_some(), "{error}");
        assert_cause_printed_once(error.as_ref());
    }
}
