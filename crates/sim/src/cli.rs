//! `weiling-relay sim`: the simulator on its own, for manual testing against a relay.

use std::net::TcpListener;
use std::sync::Arc;

use secrecy::SecretString;

use super::events::{self, CustomerChange};
use super::{CallbackDriver, Outcome, RetryPolicy, SimConfig, Simulator};
use weiling_proto::callback::AppKeys;
use weiling_proto::entity::Entity;

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address of the simulated OpenAPI (use it as `weiling.base_url`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: String,
    #[arg(long, default_value = "wloa0123456789abcdef0123456789abcdef")]
    pub app_id: String,
    /// The secret the simulated token endpoint accepts (give the relay the same one).
    #[arg(
        long,
        env = "WEILING_RELAY_APP_SECRET",
        hide_env_values = true,
        default_value = "simulator-secret"
    )]
    pub app_secret: String,
    /// Customers to create at start.
    #[arg(long, default_value_t = 100)]
    pub customers: usize,
    /// Contacts to create at start (`contact/batch`).
    #[arg(long, default_value_t = 20)]
    pub contacts: usize,
    /// Also send this many change callbacks (every fifth about a contact) to `--relay` (needs --token and --encoding-aes-key).
    #[arg(long, default_value_t = 0)]
    pub callbacks: usize,
    /// Base URL of a running relay, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub relay: Option<String>,
    #[arg(long, env = "WEILING_RELAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, env = "WEILING_RELAY_ENCODING_AES_KEY", hide_env_values = true)]
    pub encoding_aes_key: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("could not listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("{0}")]
    Key(#[from] weiling_proto::callback::cipher::KeyError),
    #[error("--callbacks needs --relay, --token and --encoding-aes-key")]
    MissingRelay,
    #[error("simulator server failed: {0}")]
    Server(std::io::Error),
}

/// Serves until Ctrl-C (or SIGTERM), optionally sending callbacks first.
pub async fn run(args: SimArgs) -> Result<(), SimError> {
    let sim = Simulator::new(SimConfig::default());
    sim.add_app(&args.app_id, &args.app_secret);
    let ids: Vec<String> = (0..args.customers).map(|i| format!("sim-{i:05}")).collect();
    for id in &ids {
        sim.create_customer(&args.app_id, id);
    }
    let contacts: Vec<String> = (0..args.contacts)
        .map(|i| format!("sim-contact-{i:05}"))
        .collect();
    for id in &contacts {
        sim.create(Entity::Contact, &args.app_id, id);
    }
    let listener =
        TcpListener::bind(&args.listen).map_err(|e| SimError::Listen(args.listen.clone(), e))?;
    let server = sim.serve(listener).map_err(SimError::Server)?;
    println!("Weiling simulator on http://{}", args.listen);
    println!("  app_id     {}", args.app_id);
    println!("  customers  {} (sim-00000 …)", ids.len());
    println!("  contacts   {} (sim-contact-00000 …)", contacts.len());
    let handle = server.handle();
    let serving = tokio::spawn(server);

    if args.callbacks > 0 {
        let (Some(relay), Some(token), Some(aes)) =
            (&args.relay, &args.token, &args.encoding_aes_key)
        else {
            handle.stop(false).await;
            return Err(SimError::MissingRelay);
        };
        let keys = Arc::new(AppKeys::new(
            &args.app_id,
            &SecretString::from(token.clone()),
            &SecretString::from(aes.clone()),
            true,
        )?);
        let driver = CallbackDriver::new(relay, keys, RetryPolicy::default());
        let mut acknowledged = 0;
        for i in 0..args.callbacks {
            // Every fifth change is a contact's, when there are contacts.
            let event = match contacts.get(i / 5 % contacts.len().max(1)) {
                Some(id) if i % 5 == 4 => {
                    events::contact_update(&sim.change(Entity::Contact, &args.app_id, id))
                }
                _ => {
                    let Some(id) = ids.get(i % ids.len().max(1)) else {
                        break;
                    };
                    let record = sim.change_customer(&args.app_id, id);
                    events::customer_update(&record, CustomerChange::Remark)
                }
            };
            if driver.send(&event.to_json(&args.app_id)).await.outcome == Outcome::Ok {
                acknowledged += 1;
            }
        }
        println!(
            "sent {} callbacks to {relay}: {acknowledged} acknowledged",
            args.callbacks
        );
    }
    println!("serving; Ctrl-C to stop");
    let _ = tokio::signal::ctrl_c().await;
    handle.stop(true).await;
    let _ = serving.await;
    println!(
        "{} batch calls, {} token fetches",
        sim.batch_calls().len(),
        sim.token_calls()
    );
    Ok(())
}
