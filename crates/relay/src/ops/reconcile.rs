//! `weiling-relay reconcile`: re-fetch listed customers (or contacts, `--entity contact`) through the
//! live enrichment path and publish them as records, to repair a mirror after events were lost
//! upstream. Resumable via a progress file.
//!
//! Every id goes through [`WeilingClient::fetch`] (token cache, rate limiter, retries,
//! breaker) in batches of at most 100, and every record through [`record::reconcile_message`] and a
//! confirmed publish, exactly like a window flush, except that the "unchanged since the last publish"
//! suppression does not apply: a reconcile always publishes.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use futures::future::join_all;
use secrecy::ExposeSecret;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{OpsError, publish_confirmed, start_publisher, stop_publisher};
use crate::config::Settings;
use crate::entity::Entity;
use crate::pipeline::enrich::{EnrichError, MAX_BATCH_IDS, WeilingClient};
use crate::pipeline::publish::record::{self, Op, Record};
use crate::pipeline::window::coalescer::IdSource;
use crate::verify::unix_ms;

/// The `event_types` entry of a reconciled record's `source`.
pub const SOURCE_TYPE: &str = "reconcile";
/// Longest accepted id; Weiling's are a few dozen characters.
const MAX_ID_LEN: usize = 128;
/// Without a terminal, a progress line every this many batches.
const PLAIN_PROGRESS_EVERY: usize = 10;
const PROGRESS_HEADER: &str = "# weiling-relay reconcile progress, app_id=";

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The app whose customers (or contacts) are re-fetched.
    #[arg(long = "app", value_name = "APP_ID")]
    pub app: String,
    /// What the ids name: `customer` (customer/batch) or `contact` (contact/batch).
    #[arg(long, default_value_t = Entity::Customer, value_name = "ENTITY")]
    pub entity: Entity,
    /// Ids, one a line (blank lines and `#` comments ignored, repeats fetched once); `-` = stdin.
    #[arg(long, value_name = "FILE|-")]
    pub ids: PathBuf,
    /// Config file layered over the built-in defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Skip the ids the progress file records as published by an earlier run.
    #[arg(long)]
    pub resume: bool,
    /// Progress file [default: next to the ids file, `<FILE>.<APP_ID>.progress` (`….contact.progress`
    /// for contacts); none for stdin].
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Stop after this many batches; the rest can follow with --resume.
    #[arg(long, value_name = "N")]
    pub max_batches: Option<usize>,
    /// Ids per Weiling call (1–100).
    #[arg(long, default_value_t = MAX_BATCH_IDS, value_name = "N")]
    pub batch_size: usize,
}

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct Plan {
    pub app_id: String,
    pub entity: Entity,
    /// Distinct ids, in file order ([`parse_ids`]).
    pub ids: Vec<String>,
    /// Where confirmed ids are recorded; `None` = not resumable.
    pub progress_file: Option<PathBuf>,
    /// Skip ids the progress file already records (otherwise it is started afresh).
    pub resume: bool,
    pub max_batches: Option<usize>,
    pub batch_size: usize,
}

impl Plan {
    pub fn new(app_id: &str, ids: Vec<String>) -> Self {
        Self {
            app_id: app_id.to_owned(),
            entity: Entity::Customer,
            ids,
            progress_file: None,
            resume: false,
            max_batches: None,
            batch_size: MAX_BATCH_IDS,
        }
    }
}

/// Counts of one run; `fetched + missing + failed + remaining + skipped = ids`, give or take the
/// ids whose fetch succeeded but whose publish failed (counted in `fetched`/`missing` and `failed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub app_id: String,
    pub entity: Entity,
    /// Distinct ids listed.
    pub ids: usize,
    /// Already published by an earlier run (progress file), not fetched again.
    pub skipped: usize,
    /// Ids Weiling returned a record for.
    pub fetched: usize,
    /// Ids Weiling does not know: published as `missing`.
    pub missing: usize,
    /// Records confirmed by the broker (upsert and missing).
    pub published: usize,
    /// Ids not published: their batch call failed, or their publish was never confirmed.
    pub failed: usize,
    pub batches: usize,
    pub batches_total: usize,
    /// Ids not attempted because the run stopped early.
    pub remaining: usize,
    /// Stopped by Ctrl-C (or the stop token), not by `max_batches`.
    pub interrupted: bool,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0 && !self.interrupted
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "reconcile {} ({}s): {} ids, {} skipped (published by an earlier run)",
            self.app_id, self.entity, self.ids, self.skipped
        )?;
        writeln!(f, "fetched:   {}", self.fetched)?;
        writeln!(f, "missing:   {}", self.missing)?;
        writeln!(f, "published: {}", self.published)?;
        writeln!(f, "failed:    {}", self.failed)?;
        if self.remaining > 0 {
            writeln!(
                f,
                "not yet attempted: {} ({}); continue with --resume",
                self.remaining,
                if self.interrupted {
                    "interrupted"
                } else {
                    "--max-batches reached"
                }
            )?;
        }
        Ok(())
    }
}

/// Customer ids from an ids file: one a line, surrounding blanks trimmed, blank lines and lines
/// starting with `#` ignored, a ` #` comment after an id dropped, repeats kept once (first wins).
pub fn parse_ids(text: &str) -> Result<Vec<String>, OpsError> {
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        let problem = if line.len() > MAX_ID_LEN {
            Some("id is longer than 128 bytes")
        } else if line.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("id contains whitespace or a control character (one id a line)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(OpsError::IdLine {
                line: i + 1,
                problem,
            });
        }
        if seen.insert(line) {
            ids.push(line.to_owned());
        }
    }
    Ok(ids)
}

/// A `#` starts a comment at the start of a line or after whitespace; inside an id it is kept.
fn strip_comment(line: &str) -> &str {
    let mut previous_blank = true;
    for (at, c) in line.char_indices() {
        if c == '#' && previous_blank {
            return line.get(..at).unwrap_or_default();
        }
        previous_blank = c.is_whitespace();
    }
    line
}

/// Reads the ids file, or stdin for `-`.
pub fn read_ids(path: &Path) -> Result<Vec<String>, OpsError> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)
    } else {
        File::open(path).and_then(|mut f| f.read_to_string(&mut text))
    };
    read.map_err(|source| OpsError::File {
        path: path.to_owned(),
        source,
    })?;
    parse_ids(&text)
}

/// The default progress file: next to the ids file, named after it, the app and (for contacts) the entity.
pub fn default_progress_path(ids: &Path, app_id: &str, entity: Entity) -> Option<PathBuf> {
    if ids == Path::new("-") {
        return None;
    }
    let mut name = ids.file_name()?.to_os_string();
    match entity {
        Entity::Customer => name.push(format!(".{app_id}.progress")),
        Entity::Contact => name.push(format!(".{app_id}.{entity}.progress")),
    }
    Some(ids.with_file_name(name))
}

/// What a progress file's header names: the app, plus the entity for contacts (so a customer run can
/// never resume from a contact run's file). Customer files keep the plain app id they always had.
pub fn progress_subject(app_id: &str, entity: Entity) -> String {
    match entity {
        Entity::Customer => app_id.to_owned(),
        Entity::Contact => format!("{app_id} entity={entity}"),
    }
}

/// The ids confirmed so far, one a line after a header naming the app; appended and fsynced per
/// confirmed batch, so a crash loses at most the batch in flight (which is then published again).
pub struct ProgressFile {
    path: PathBuf,
    file: File,
}

impl ProgressFile {
    /// Ids recorded by earlier runs. A missing file records nothing; a last line without its newline
    /// was torn by a crash mid-append and is ignored.
    pub fn load(path: &Path, subject: &str) -> Result<HashSet<String>, OpsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(source) => {
                return Err(OpsError::File {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let complete = text
            .rfind('\n')
            .map_or("", |end| text.get(..end).unwrap_or_default());
        let mut lines = complete.lines();
        match lines.next() {
            None => return Ok(HashSet::new()),
            Some(header) => check_header(path, header, subject)?,
        }
        Ok(lines
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Opens for appending. `resume` keeps what earlier runs recorded (cutting a torn last line);
    /// otherwise the file starts afresh with just the header.
    pub fn open(path: &Path, subject: &str, resume: bool) -> Result<Self, OpsError> {
        let io = |source| OpsError::File {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        // Checked even when starting afresh: a mistyped --state must not overwrite some other file.
        if let Some(header) = text.lines().next() {
            check_header(path, header, subject)?;
        }
        let keep = if resume {
            text.rfind('\n').map_or(0, |end| end + 1)
        } else {
            0
        };
        file.set_len(keep as u64).map_err(io)?;
        file.seek(SeekFrom::End(0)).map_err(io)?;
        if keep == 0 {
            file.write_all(format!("{PROGRESS_HEADER}{subject}\n").as_bytes())
                .map_err(io)?;
        }
        file.sync_data().map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Records confirmed ids durably (one write, then fsync).
    pub fn append(&mut self, ids: &[&str]) -> Result<(), OpsError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut text = ids.join("\n");
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|source| OpsError::File {
                path: self.path.clone(),
                source,
            })
    }
}

fn check_header(path: &Path, header: &str, subject: &str) -> Result<(), OpsError> {
    match header.strip_prefix(PROGRESS_HEADER) {
        Some(found) if found == subject => Ok(()),
        Some(found) => Err(OpsError::Progress {
            path: path.to_owned(),
            problem: format!("records app `{found}`, not `{subject}`"),
        }),
        None => Err(OpsError::Progress {
            path: path.to_owned(),
            problem: "is not a reconcile progress file".to_owned(),
        }),
    }
}

/// Runs a reconcile. `on_batch` sees the counts after every batch. `stop` ends the run after the
/// current batch; `abort` ends it at once (an unconfirmed batch is not recorded, so `--resume` does it
/// again).
pub async fn reconcile(
    settings: &Settings,
    plan: Plan,
    on_batch: &mut dyn FnMut(&Summary),
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> Result<Summary, OpsError> {
    if settings.app(&plan.app_id).is_none() {
        return Err(OpsError::UnknownApp(plan.app_id));
    }
    if !(1..=MAX_BATCH_IDS).contains(&plan.batch_size) {
        return Err(OpsError::Usage("--batch-size must be 1–100"));
    }
    let subject = progress_subject(&plan.app_id, plan.entity);
    let done = match (&plan.progress_file, plan.resume) {
        (Some(path), true) => ProgressFile::load(path, &subject)?,
        _ => HashSet::new(),
    };
    let mut progress = plan
        .progress_file
        .as_deref()
        .map(|path| ProgressFile::open(path, &subject, plan.resume))
        .transpose()?;
    // `parse_ids` already de-duplicates; library callers may not have.
    let mut listed = HashSet::new();
    let ids: Vec<&String> = plan.ids.iter().filter(|id| listed.insert(*id)).collect();
    let todo: Vec<&String> = ids
        .iter()
        .copied()
        .filter(|id| !done.contains(*id))
        .collect();
    let mut summary = Summary {
        app_id: plan.app_id.clone(),
        entity: plan.entity,
        ids: ids.len(),
        skipped: ids.len() - todo.len(),
        batches_total: todo.len().div_ceil(plan.batch_size),
        ..Summary::default()
    };
    if todo.is_empty() {
        on_batch(&summary);
        return Ok(summary);
    }

    let client = WeilingClient::new(
        &settings.weiling,
        &settings.apps,
        Some("reconcile".to_owned()),
    )?;
    let (publisher, publisher_task) =
        start_publisher(&settings.amqp, "weiling-relay reconcile", abort).await?;
    let sign_key =
        Some(&settings.security.sign_records_key).filter(|k| !k.expose_secret().is_empty());
    let exchange = &settings.amqp.customers_exchange;
    let app_id = plan.app_id.as_str();
    let source = IdSource {
        events: 0,
        event_types: [SOURCE_TYPE.to_owned()].into(),
        first_event_at_ms: unix_ms(SystemTime::now()),
        deliveries: Vec::new(),
    };

    let mut outcome = Ok(());
    let chunks: Vec<Vec<String>> = todo
        .chunks(plan.batch_size)
        .map(|c| c.iter().map(|id| (*id).clone()).collect())
        .collect();
    for (n, chunk) in chunks.iter().enumerate() {
        if stop.is_cancelled() || abort.is_cancelled() {
            summary.interrupted = true;
        }
        if summary.interrupted || plan.max_batches.is_some_and(|max| n >= max) {
            summary.remaining = chunks.iter().skip(n).map(Vec::len).sum();
            break;
        }
        let fetched = match client.fetch(app_id, plan.entity, chunk, abort).await {
            Ok(fetched) => fetched,
            Err(EnrichError::Cancelled) => {
                summary.interrupted = true;
                summary.remaining = chunks.iter().skip(n).map(Vec::len).sum();
                break;
            }
            Err(error) => {
                warn!(app_id, ids = chunk.len(), error = %error, "reconcile batch call failed");
                summary.failed += chunk.len();
                summary.batches += 1;
                on_batch(&summary);
                continue;
            }
        };
        let records: HashMap<&str, &RawValue> = fetched
            .records
            .iter()
            .map(|(id, r)| (id.as_str(), &**r))
            .collect();
        let fetched_at_ms = unix_ms(SystemTime::now());
        let publishes = chunk.iter().map(|id| {
            let (op, record) = match records.get(id.as_str()) {
                Some(record) => (Op::Upsert, Some(*record)),
                None => (Op::Missing, None),
            };
            let message = record::reconcile_message(
                exchange,
                &Record {
                    entity: plan.entity,
                    app_id,
                    id,
                    op,
                    record,
                    source: &source,
                    fetched_at_ms,
                },
                sign_key,
            );
            let publisher = &publisher;
            async move { (id, op, publish_confirmed(publisher, message, abort).await) }
        });
        let mut confirmed: Vec<&str> = Vec::with_capacity(chunk.len());
        for (id, op, result) in join_all(publishes).await {
            match op {
                Op::Upsert => summary.fetched += 1,
                Op::Missing => summary.missing += 1,
            }
            match result {
                Ok(()) => {
                    summary.published += 1;
                    confirmed.push(id);
                }
                Err(error) => {
                    warn!(
                        app_id,
                        error = error.as_str(),
                        "reconcile record not confirmed"
                    );
                    summary.failed += 1;
                }
            }
        }
        summary.batches += 1;
        if let Some(progress) = progress.as_mut()
            && let Err(error) = progress.append(&confirmed)
        {
            // The records are out, only the bookkeeping failed: stop rather than lose track.
            outcome = Err(error);
            summary.remaining = chunks.iter().skip(n + 1).map(Vec::len).sum();
            break;
        }
        on_batch(&summary);
    }
    stop_publisher(publisher, publisher_task, abort).await;
    outcome.map(|()| summary)
}

/// Prints the progress line on stderr: redrawn in place on a terminal, a plain line every few
/// batches otherwise (logs and CI capture).
struct ProgressLine {
    tty: bool,
    started: Instant,
    drawn: bool,
}

impl ProgressLine {
    fn show(&mut self, s: &Summary) {
        let attempted = s.published + s.failed;
        let rate = attempted as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "reconcile {}: batch {}/{}, published {} of {} (fetched {}, missing {}, failed {}), {:.0} ids/s",
            s.app_id,
            s.batches,
            s.batches_total,
            s.published,
            s.ids - s.skipped,
            s.fetched,
            s.missing,
            s.failed,
            rate
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
            self.drawn = true;
        } else if s.batches.is_multiple_of(PLAIN_PROGRESS_EVERY) || s.batches == s.batches_total {
            eprintln!("{line}");
        }
    }

    fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}

/// `weiling-relay reconcile …`: prints progress on stderr and the summary on stdout. Ok(false) when
/// an id failed or the run was interrupted.
pub async fn run_cli(args: ReconcileArgs, env: &HashMap<String, String>) -> Result<bool, OpsError> {
    let settings = Settings::load(args.config.as_deref(), env)?;
    let ids = read_ids(&args.ids)?;
    let progress_file = args
        .state
        .clone()
        .or_else(|| default_progress_path(&args.ids, &args.app, args.entity));
    if args.resume && progress_file.is_none() {
        return Err(OpsError::Usage(
            "--resume needs --state FILE when the ids come from stdin",
        ));
    }
    let plan = Plan {
        app_id: args.app,
        entity: args.entity,
        ids,
        progress_file,
        resume: args.resume,
        max_batches: args.max_batches,
        batch_size: args.batch_size,
    };
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    super::stop_on_signals(stop.clone(), abort.clone());
    let mut line = ProgressLine {
        tty: std::io::stderr().is_terminal(),
        started: Instant::now(),
        drawn: false,
    };
    let result = reconcile(&settings, plan, &mut |s| line.show(s), &stop, &abort).await;
    line.finish();
    let summary = result?;
    print!("{summary}");
    Ok(summary.ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wr-reconcile-{}-{name}-{}",
            std::process::id(),
            unix_ms(SystemTime::now())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("progress")
    }

    #[test]
    fn ids_skip_blanks_and_comments_trim_and_deduplicate() {
        let text = "# customers to repair\n\n  c1  \nc2 # re-check\nc1\n\t\nc#3\n   # indented comment\nc2\r\n";
        assert_eq!(parse_ids(text).unwrap(), vec!["c1", "c2", "c#3"]);
        assert_eq!(parse_ids("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn bad_id_lines_name_their_line() {
        let err = parse_ids("ok\nfirst second\n").unwrap_err();
        assert!(matches!(err, OpsError::IdLine { line: 2, .. }), "{err}");
        let long = format!("a\n\n{}\n", "x".repeat(129));
        assert!(matches!(
            parse_ids(&long).unwrap_err(),
            OpsError::IdLine { line: 3, .. }
        ));
        assert!(matches!(
            parse_ids("a\u{7}b").unwrap_err(),
            OpsError::IdLine { line: 1, .. }
        ));
    }

    #[test]
    fn the_default_progress_file_sits_next_to_the_ids() {
        assert_eq!(
            default_progress_path(Path::new("/tmp/x/ids.txt"), "wloa1", Entity::Customer),
            Some(PathBuf::from("/tmp/x/ids.txt.wloa1.progress"))
        );
        assert_eq!(
            default_progress_path(Path::new("/tmp/x/ids.txt"), "wloa1", Entity::Contact),
            Some(PathBuf::from("/tmp/x/ids.txt.wloa1.contact.progress"))
        );
        assert_eq!(
            default_progress_path(Path::new("-"), "wloa1", Entity::Customer),
            None
        );
    }

    #[test]
    fn progress_is_appended_and_read_back_and_a_fresh_run_starts_over() {
        let path = temp("roundtrip");
        assert!(ProgressFile::load(&path, "wloa1").unwrap().is_empty());
        let mut file = ProgressFile::open(&path, "wloa1", false).unwrap();
        file.append(&["c1", "c2"]).unwrap();
        file.append(&[]).unwrap();
        file.append(&["c3"]).unwrap();
        drop(file);
        let done = ProgressFile::load(&path, "wloa1").unwrap();
        assert_eq!(done, HashSet::from(["c1".into(), "c2".into(), "c3".into()]));

        let mut resumed = ProgressFile::open(&path, "wloa1", true).unwrap();
        resumed.append(&["c4"]).unwrap();
        assert_eq!(ProgressFile::load(&path, "wloa1").unwrap().len(), 4);

        ProgressFile::open(&path, "wloa1", false).unwrap();
        assert!(ProgressFile::load(&path, "wloa1").unwrap().is_empty());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_before_appending() {
        let path = temp("torn");
        std::fs::write(&path, format!("{PROGRESS_HEADER}wloa1\nc1\nc2\nc3-half")).unwrap();
        let done = ProgressFile::load(&path, "wloa1").unwrap();
        assert_eq!(done, HashSet::from(["c1".into(), "c2".into()]));
        let mut file = ProgressFile::open(&path, "wloa1", true).unwrap();
        file.append(&["c3"]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{PROGRESS_HEADER}wloa1\nc1\nc2\nc3\n")
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn another_apps_or_a_foreign_file_is_refused() {
        let path = temp("foreign");
        std::fs::write(&path, format!("{PROGRESS_HEADER}wloaOther\nc1\n")).unwrap();
        assert!(matches!(
            ProgressFile::load(&path, "wloa1"),
            Err(OpsError::Progress { .. })
        ));
        assert!(matches!(
            ProgressFile::open(&path, "wloa1", true),
            Err(OpsError::Progress { .. })
        ));
        assert!(
            matches!(
                ProgressFile::open(&path, "wloa1", false),
                Err(OpsError::Progress { .. })
            ),
            "another app's progress is not overwritten"
        );
        std::fs::write(&path, "c1\nc2\n").unwrap();
        assert!(matches!(
            ProgressFile::load(&path, "wloa1"),
            Err(OpsError::Progress { .. })
        ));
        assert!(
            matches!(
                ProgressFile::open(&path, "wloa1", false),
                Err(OpsError::Progress { .. })
            ),
            "an ids file given as --state by mistake is not overwritten"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c1\nc2\n");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_summary_prints_every_count_and_the_ok_rule() {
        let s = Summary {
            app_id: "wloa1".into(),
            ids: 10,
            skipped: 2,
            fetched: 5,
            missing: 1,
            published: 6,
            failed: 0,
            remaining: 2,
            ..Summary::default()
        };
        let text = s.to_string();
        for needle in [
            "fetched:   5",
            "missing:   1",
            "published: 6",
            "failed:    0",
            "--resume",
        ] {
            assert!(text.contains(needle), "{text}");
        }
        assert!(s.ok());
        assert!(
            !Summary {
                failed: 1,
                ..s.clone()
            }
            .ok()
        );
        assert!(
            !Summary {
                interrupted: true,
                ..s
            }
            .ok()
        );
    }
}
