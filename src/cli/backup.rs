//! `flowhub backup <dir>`: a consistent copy of the data directory, taken while the hub runs.
//!
//! See `log::backup` for how the copy stays consistent. To restore, start a hub with
//! `FLOWHUB_DATA_DIR` (or `--data-dir`) pointing at the copy, or copy it back in place of the
//! data directory while the hub is stopped.
//!
//! Exit status: 0 with a checked copy, 1 when no consistent copy could be made, 2 when the
//! arguments or configuration are wrong.

use std::path::PathBuf;

use super::DataDirArgs;

/// Arguments of `flowhub backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Where the copy goes: a directory that does not exist yet (or is empty).
    pub dest: PathBuf,
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// Runs the subcommand; returns the process exit status.
pub fn run(args: BackupArgs) -> i32 {
    let data_dir = match args.data.resolve() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("flowhub backup: {e}");
            return 2;
        }
    };
    match crate::log::backup::backup(&data_dir, &args.dest) {
        Ok(b) => {
            println!(
                "backed up {} into {}: {} objects, up to sequence number {}, {} bytes",
                data_dir.display(),
                args.dest.display(),
                b.objects,
                b.last_seq,
                b.bytes
            );
            println!(
                "to restore: FLOWHUB_DATA_DIR={} flowhub serve",
                args.dest.display()
            );
            0
        }
        Err(e) => {
            eprintln!("flowhub backup: {e}");
            1
        }
    }
}
