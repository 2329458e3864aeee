//! Progress on the terminal: the bars of `transum run` (articles overall,
//! segments of the current article, a spinner for the summary) as the
//! library's `pipeline::Progress` observer, and the bar of `transum translate`.
//! Off a terminal (cron, a log file) one line per article goes to stderr.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The bars of one `transum run`.
pub struct RunBars {
    tty: bool,
    multi: MultiProgress,
    overall: ProgressBar,
    article: ProgressBar,
    spinner: Option<ProgressBar>,
    /// What the summary stage is called in its line ("extractive", ...).
    summarizer: String,
}

impl RunBars {
    pub fn new(summarizer: &str) -> Self {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::new();
        if !tty {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(style(
            "overall [{bar:30}] {pos}/{len} articles, {elapsed} elapsed",
        ));
        let article = multi.add(ProgressBar::new(0));
        article.set_style(style(
            "{prefix:>28} [{bar:30}] {pos}/{len} segments, eta {eta}",
        ));
        RunBars {
            tty,
            multi,
            overall,
            article,
            spinner: None,
            summarizer: summarizer.to_string(),
        }
    }

    /// Clear every bar (before the end-of-run report).
    pub fn finish(self) {
        if let Some(sp) = self.spinner {
            sp.finish_and_clear();
        }
        self.article.finish_and_clear();
        self.overall.finish_and_clear();
    }
}

impl transum::pipeline::Progress for RunBars {
    fn article(&mut self, path: &Path, index: usize, total: usize) {
        let name = file_name(path);
        if self.tty {
            self.overall.set_length(total as u64);
            self.overall.set_position(index as u64);
            self.article.set_prefix(name);
            self.article.set_position(0);
        } else {
            eprintln!("[{}/{total}] translating {name}", index + 1);
        }
    }

    fn segments(&mut self, _path: &Path, done: usize, total: usize) {
        self.article.set_length(total as u64);
        self.article.set_position(done as u64);
    }

    fn summary(&mut self, articles: usize) {
        let what = format!("summarizing {articles} article(s) ({})", self.summarizer);
        if self.tty {
            self.article.finish_and_clear();
            let sp = self.multi.add(ProgressBar::new_spinner());
            sp.set_message(what);
            sp.enable_steady_tick(std::time::Duration::from_millis(120));
            self.spinner = Some(sp);
        } else {
            eprintln!("{what}");
        }
    }
}

/// The bar of `transum translate` over `units` units (hidden off a terminal).
pub fn translate_bar(units: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(units as u64);
    bar.set_style(style(
        "{spinner} translating [{bar:30}] {pos}/{len} units, {elapsed} elapsed, eta {eta}",
    ));
    bar
}
