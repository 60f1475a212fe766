//! `card-reader`: the provider's terminal client on the command line. Lists PC/SC readers,
//! reads a card's UID, settles an order's charge (card, code, receipt), and resumes swipes the
//! journal still holds after a network drop. News and prompts go to stderr, the receipt to
//! stdout, answers come from stdin (so a script or a test can pipe them).

use card_reader::amount::Amount;
use card_reader::api::{ApiKey, ClientError, LedgerClient, REQUEST_TIMEOUT_DEFAULT};
use card_reader::card::{CardError, CardSource, KnownUid};
use card_reader::journal::{Journal, Outcome};
use card_reader::settle::{Challenge, Finish, SettleError, StdConsole, SwipeRequest, Terminal};
use card_reader::uid::CardUid;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit statuses, documented in README.md ("card-reader").
mod exit {
    pub const FAILED: u8 = 1;
    pub const CARD: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const PENDING: u8 = 5;
    pub const NOT_CHARGED: u8 = 6;
}

#[derive(Parser)]
#[command(
    name = "card-reader",
    version,
    about = "居家养老服务刷卡终端 / the provider's card terminal: read the elder's card, charge, confirm with the code, print the receipt"
)]
struct Cli {
    /// The ledger server, e.g. https://ledger.example.gov.cn
    #[arg(long, env = "LEDGER_SERVER", global = true)]
    server: Option<String>,
    /// The provider's API key (prefer the environment: a command line shows in `ps`).
    #[arg(long, env = "LEDGER_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// The swipe journal [default: ~/.card-reader/pending.jsonl]
    #[arg(long, env = "CARD_READER_JOURNAL", global = true)]
    journal: Option<PathBuf>,
    /// Seconds an HTTP request may take before it is retried or given up.
    #[arg(long, global = true, default_value_t = REQUEST_TIMEOUT_DEFAULT.as_secs())]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the card readers PC/SC sees.
    Readers,
    /// Waits for a card and prints its UID.
    ReadUid {
        #[command(flatten)]
        card: CardArgs,
    },
    /// Charges an agreed order: reads the card, places the charge, asks for the code, prints
    /// the receipt.
    Charge {
        /// The order to charge.
        #[arg(long)]
        order: String,
        /// Yuan (e.g. 58 or 58.50); the order's agreed price when omitted.
        #[arg(long)]
        amount: Option<String>,
        /// The card UID read elsewhere (a phone's NFC), instead of a PC/SC reader.
        #[arg(long, value_name = "HEX", conflicts_with = "reader")]
        card_uid: Option<String>,
        #[command(flatten)]
        card: CardArgs,
        /// Confirm with the elder's hardware token even if they have a phone (phone off).
        #[arg(long)]
        token: bool,
        /// The worker's name or number, recorded with the charge.
        #[arg(long)]
        staff: Option<String>,
        /// A code to try before asking (repeatable).
        #[arg(long)]
        code: Vec<String>,
        /// Don't ask "charge N yuan?".
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Finishes (or cancels) swipes the journal holds unfinished.
    Resume {
        /// Only this order's swipes.
        #[arg(long)]
        order: Option<String>,
        /// Cancel instead of asking for the code.
        #[arg(long)]
        cancel: bool,
        /// A code to try before asking (repeatable).
        #[arg(long)]
        code: Vec<String>,
    },
    /// Lists the unfinished swipes in the journal.
    Pending,
}

#[derive(clap::Args)]
struct CardArgs {
    /// Use this reader (its name or a part of it); any reader when omitted.
    #[arg(long)]
    reader: Option<String>,
    /// Seconds to wait for the card.
    #[arg(long, default_value_t = 30)]
    wait: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("错误 error: {e}");
            ExitCode::from(exit_status(&e))
        }
    }
}

fn exit_status(e: &SettleError) -> u8 {
    match e {
        SettleError::Card(_) => exit::CARD,
        SettleError::Client(ClientError::Refused(_)) | SettleError::OrderNotAgreed { .. } => {
            exit::REFUSED
        }
        SettleError::Client(ClientError::Unreachable { .. }) => exit::PENDING,
        SettleError::Declined => exit::NOT_CHARGED,
        _ => exit::FAILED,
    }
}

fn run(cli: Cli) -> Result<u8, SettleError> {
    match &cli.command {
        Command::Readers => {
            for name in open_reader(None)?.readers()? {
                println!("{name}");
            }
            Ok(0)
        }
        Command::ReadUid { card } => {
            let mut reader = open_reader(card.reader.clone())?;
            eprintln!(
                "请将卡放在读卡器上 / hold the card on the reader (up to {} s)…",
                card.wait
            );
            println!("{}", reader.read_uid(Duration::from_secs(card.wait))?);
            Ok(0)
        }
        Command::Pending => {
            let journal = journal(&cli)?;
            for p in journal.pending()? {
                println!(
                    "{} order {} card {} amount {} charge {} (started {})",
                    p.key,
                    p.request.order_id,
                    p.request.card_uid,
                    p.request.amount,
                    p.charge_id.as_deref().unwrap_or("-"),
                    p.started_at
                );
            }
            Ok(0)
        }
        Command::Charge {
            order,
            amount,
            card_uid,
            card,
            token,
            staff,
            code,
            yes,
        } => {
            let amount = amount.as_deref().map(str::parse::<Amount>).transpose()?;
            let mut source: Box<dyn CardSource> = match card_uid {
                Some(hex) => Box::new(KnownUid(
                    CardUid::parse(hex).map_err(|e| SettleError::Setup(e.to_string()))?,
                )),
                None => Box::new(open_reader(card.reader.clone())?),
            };
            let swipe = SwipeRequest {
                order_id: order.clone(),
                amount,
                challenge: token.then_some(Challenge::Token),
                staff: staff.clone(),
                wait: Duration::from_secs(card.wait),
                assume_yes: *yes,
            };
            let (client, journal) = (client(&cli)?, journal(&cli)?);
            let mut console = StdConsole;
            let mut terminal = Terminal {
                client: &client,
                journal: &journal,
                console: &mut console,
                codes: code.iter().cloned().collect(),
            };
            let finish = terminal.charge(&swipe, source.as_mut())?;
            Ok(finish_status(&finish, false))
        }
        Command::Resume {
            order,
            cancel,
            code,
        } => {
            let (client, journal) = (client(&cli)?, journal(&cli)?);
            let pending: Vec<_> = journal
                .pending()?
                .into_iter()
                .filter(|p| order.as_ref().is_none_or(|o| *o == p.request.order_id))
                .collect();
            if pending.is_empty() {
                eprintln!(
                    "没有未完成的刷卡 / no unfinished swipes in {}",
                    journal.path().display()
                );
                return Ok(0);
            }
            let mut console = StdConsole;
            let mut terminal = Terminal {
                client: &client,
                journal: &journal,
                console: &mut console,
                codes: code.iter().cloned().collect(),
            };
            let mut status = 0;
            for swipe in &pending {
                let this = match terminal.resume(swipe, *cancel) {
                    Ok(finish) => finish_status(&finish, *cancel),
                    Err(e) => {
                        eprintln!("错误 error: {e}");
                        exit_status(&e)
                    }
                };
                status = status.max(this);
            }
            Ok(status)
        }
    }
}

/// 0 for what was asked (a receipt; a cancel), else why nothing was charged.
fn finish_status(finish: &Finish, cancel_asked: bool) -> u8 {
    match finish {
        Finish::Confirmed(_) | Finish::Cancelled => 0,
        Finish::Ended(Outcome::Voided | Outcome::Expired | Outcome::NeverPlaced)
            if cancel_asked =>
        {
            0
        }
        Finish::Ended(_) => exit::NOT_CHARGED,
        Finish::Interrupted => exit::PENDING,
    }
}

fn client(cli: &Cli) -> Result<LedgerClient, SettleError> {
    let server = cli.server.as_deref().ok_or_else(|| {
        SettleError::Setup(
            "未指定服务器 / no server: give --server URL or set LEDGER_SERVER".into(),
        )
    })?;
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        return Err(SettleError::Setup(format!(
            "服务器地址应以 http:// 或 https:// 开头 / --server must start with http:// or https:// (got {server:?})"
        )));
    }
    let key = cli.key.clone().ok_or_else(|| {
        SettleError::Setup("未指定终端密钥 / no key: set LEDGER_KEY (or give --key)".into())
    })?;
    Ok(LedgerClient::new(
        server,
        ApiKey::new(key),
        Duration::from_secs(cli.timeout),
    )?)
}

fn journal(cli: &Cli) -> Result<Journal, SettleError> {
    let path = cli
        .journal
        .clone()
        .or_else(Journal::default_path)
        .ok_or_else(|| {
            SettleError::Setup("HOME 未设置 / HOME is not set: give --journal PATH".into())
        })?;
    Ok(Journal::at(path))
}

#[cfg(feature = "pcsc")]
fn open_reader(reader: Option<String>) -> Result<card_reader::reader::PcscReader, CardError> {
    card_reader::reader::PcscReader::connect(reader)
}

/// Built without PC/SC: every reader command says so and points at `--card-uid`.
#[cfg(not(feature = "pcsc"))]
fn open_reader(_reader: Option<String>) -> Result<NoReader, CardError> {
    Err(CardError::Disabled)
}

#[cfg(not(feature = "pcsc"))]
struct NoReader;

#[cfg(not(feature = "pcsc"))]
impl NoReader {
    fn readers(&self) -> Result<Vec<String>, CardError> {
        Err(CardError::Disabled)
    }
}

#[cfg(not(feature = "pcsc"))]
impl CardSource for NoReader {
    fn read_uid(&mut self, _wait: Duration) -> Result<CardUid, CardError> {
        Err(CardError::Disabled)
    }
}
