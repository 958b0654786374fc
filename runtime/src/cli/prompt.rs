//! The interactive client's prompt: line editing and history (rustyline),
//! with events printed above the line being typed.

use std::path::Path;

use anyhow::Context;
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

/// The prompt shown before each command.
const PROMPT: &str = "peerlink> ";

/// Where the history is kept, under the data directory.
const HISTORY: &str = "history";

/// Prints lines above the prompt, which is then drawn again with what was
/// being typed.
pub(crate) struct Printer(Box<dyn ExternalPrinter + Send>);

impl Printer {
    /// Prints `text` above the prompt.
    pub(crate) fn print(&mut self, text: String) {
        if let Err(e) = self.0.print(format!("{text}\n")) {
            eprintln!("peerlink: cannot print above the prompt: {e}");
        }
    }
}

/// Starts the prompt on a thread of its own (rustyline blocks while it
/// reads keys). Returns the lines typed — they end with Ctrl-D, Ctrl-C or
/// a failing terminal — and the printer for everything else. The history
/// is loaded from and saved to `data_dir`/history, if there is a data
/// directory.
pub(crate) fn start(data_dir: Option<&Path>) -> anyhow::Result<(mpsc::Receiver<String>, Printer)> {
    let (lines_tx, lines) = mpsc::channel(16);
    let (printer_tx, printer_rx) = std::sync::mpsc::channel();
    let history = data_dir.map(|dir| dir.join(HISTORY));
    std::thread::Builder::new()
        .name("peerlink-prompt".into())
        .spawn(move || {
            let mut editor = match DefaultEditor::new() {
                Ok(editor) => editor,
                Err(e) => return drop(printer_tx.send(Err(e))),
            };
            if let Some(history) = &history {
                // No history yet is the usual first run.
                let _ = editor.load_history(history);
            }
            match editor.create_external_printer() {
                Ok(printer) => {
                    let printer: Box<dyn ExternalPrinter + Send> = Box::new(printer);
                    if printer_tx.send(Ok(printer)).is_err() {
                        return;
                    }
                }
                Err(e) => return drop(printer_tx.send(Err(e))),
            }
            loop {
                match editor.readline(PROMPT) {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        if lines_tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                    Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
                    Err(e) => {
                        eprintln!("peerlink: cannot read the terminal: {e}");
                        break;
                    }
                }
            }
            let Some(history) = history else { return };
            if let Some(dir) = history.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = editor.save_history(&history) {
                eprintln!("peerlink: cannot save the history to {}: {e}", history.display());
            }
        })
        .context("cannot start the prompt")?;
    let printer = printer_rx
        .recv()
        .context("the prompt stopped at once")?
        .context("cannot set up the terminal")?;
    Ok((lines, Printer(printer)))
}
