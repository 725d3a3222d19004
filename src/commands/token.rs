//! `regpoll token new`: a random token for the HTTP API, printed once, and
//! the line of the token file that lets it in (its hash, not the token).

use crate::api::auth::tokens;

pub(super) fn new(name: &str, tenant: Option<&str>) -> anyhow::Result<()> {
    let made = tokens::new_token(name, tenant).map_err(anyhow::Error::msg)?;
    println!(
        "token (shown only now; give it to the client, who sends `Authorization: Bearer <token>`):"
    );
    println!("{}", made.token);
    println!();
    println!("line for the token file (--http-token-file; then SIGHUP or restart regpoll):");
    println!("{}", made.line);
    Ok(())
}
