//! `quicast publish`: a file or stdin published to one origin, or to several at once.

use anyhow::{bail, Context};
use quicast::client::{publish, Client, Input, Origin, PublishOptions, SourceReader};

use super::connect::{client_trust, one_stream, resolve, TrustArgs};

pub(crate) async fn run_publish(
    urls: Vec<String>,
    input: String,
    title: Option<String>,
    looping: bool,
    token: String,
    trust: TrustArgs,
) -> anyhow::Result<()> {
    let (urls, path) = one_stream(&urls, "every origin gets the same stream")?;
    let (input, realtime) = if input == "-" {
        (Input::Stdin, false)
    } else {
        (Input::File(input.into()), true)
    };
    if looping && matches!(input, Input::Stdin) {
        bail!("--loop needs a file, not stdin");
    }
    // Check the input before connecting, so a bad file is reported as such.
    if let Input::File(p) = &input {
        SourceReader::open(&input)
            .await?
            .head()
            .await
            .with_context(|| format!("{}", p.display()))?;
    }
    let trust = client_trust(trust.ca.as_deref(), &trust.fingerprint)?;
    let mut origins = Vec::new();
    for url in urls {
        let addr = resolve(&url).await?;
        origins.push(Origin {
            client: Client::publisher_for(&addr, &trust)?,
            url,
            token: token.clone(),
        });
    }
    let opts = PublishOptions {
        path,
        input,
        looping,
        realtime,
        title,
    };
    let clients: Vec<Client> = origins.iter().map(|o| o.client.clone()).collect();
    let r = publish(origins, &opts).await;
    // Leave politely: each origin knows at once (a publisher that failed is not taken for
    // one that was cut off).
    for c in &clients {
        c.close().await;
    }
    r?;
    Ok(())
}
