//! `basalt pubsub ...`: publish and subscribe.

use basalt_client::Client;
use clap::Subcommand;

use super::err;

#[derive(Subcommand, Debug)]
pub enum PubSubCommand {
    /// Publish; prints how many subscribers received it.
    Publish { channel: String, payload: String },
    /// Print messages on channels (and --pattern globs) until Ctrl-C.
    Subscribe {
        channels: Vec<String>,
        #[arg(long)]
        pattern: Vec<String>,
    },
}

pub async fn pubsub(client: &Client, command: PubSubCommand) -> Result<(), String> {
    match command {
        PubSubCommand::Publish { channel, payload } => {
            crate::outln!(
                "receivers={}",
                client.pubsub().publish(channel, payload).await.map_err(err)?
            );
        }
        PubSubCommand::Subscribe { channels, pattern } => {
            let mut subscription = client
                .pubsub()
                .subscribe(
                    channels.into_iter().map(String::into_bytes).collect(),
                    pattern.into_iter().map(String::into_bytes).collect(),
                )
                .await
                .map_err(err)?;
            eprintln!("subscribed");
            while let Some(message) = subscription.next().await {
                let m = message.map_err(err)?;
                crate::outln!(
                    "{} {}",
                    String::from_utf8_lossy(&m.channel),
                    String::from_utf8_lossy(&m.payload)
                );
            }
        }
    }
    Ok(())
}
