// Starts a real flowhub hub built from this repository for the tests.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");

export function hubBinary() {
  if (process.env.FLOWHUB_BIN) return process.env.FLOWHUB_BIN;
  for (const p of ["target/release/flowhub", "target/debug/flowhub"]) {
    const f = join(root, p);
    if (existsSync(f)) return f;
  }
  const r = spawnSync("cargo", ["build", "--release"], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) throw new Error("cargo build --release failed");
  return join(root, "target/release/flowhub");
}

/**
 * A hub on a free port (or `listen`), in `dataDir` (default: a fresh temp dir). `env` adds to
 * or replaces the settings below (e.g. `FLOWHUB_AUTH: "on"` for a hub that authenticates).
 */
export class Hub {
  constructor({ env = {} } = {}) {
    this.env = env;
    this.dataDir = mkdtempSync(join(tmpdir(), "flowhub-ts-"));
    this.addr = undefined;
    this.proc = undefined;
  }
  get url() {
    return `ws://${this.addr}/ws`;
  }
  async start(listen = "127.0.0.1:0") {
    const proc = spawn(hubBinary(), ["serve"], {
      env: {
        ...process.env,
        FLOWHUB_AUTH: "none",
        FLOWHUB_DURABILITY: "never",
        FLOWHUB_DATA_DIR: this.dataDir,
        FLOWHUB_LISTEN: listen,
        FLOWHUB_LOG_FORMAT: "json",
        ...this.env,
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.proc = proc;
    const lines = createInterface({ input: proc.stderr });
    this.addr = await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("hub did not report listening within 30 s")), 30000);
      proc.on("exit", (code) => {
        clearTimeout(t);
        reject(new Error("hub exited with " + code));
      });
      lines.on("line", (line) => {
        try {
          const j = JSON.parse(line);
          if (j.fields?.addr && /listening/.test(j.fields.message ?? "")) {
            clearTimeout(t);
            resolve(j.fields.addr);
          }
        } catch {
          /* not a log line */
        }
      });
    });
    return this;
  }
  /** Stops the hub (SIGTERM) and waits for it to exit. */
  async stop() {
    const p = this.proc;
    if (!p || p.exitCode !== null) return;
    this.proc = undefined;
    await new Promise((resolve) => {
      p.on("exit", resolve);
      p.kill("SIGCONT"); // in case a test froze it
      p.kill("SIGTERM");
      setTimeout(() => p.kill("SIGKILL"), 10000).unref();
    });
  }
  /**
   * Freezes the hub (SIGSTOP): its sockets stay open but nothing answers. Resolves once every
   * thread of it is stopped (the signal takes effect a little later on a busy machine).
   */
  async freeze() {
    const pid = this.proc.pid;
    this.proc.kill("SIGSTOP");
    const stopped = () => {
      try {
        return readdirSync(`/proc/${pid}/task`).every((t) => {
          const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
          return /^\S+ \(.*\) [Tt] /s.test(stat);
        });
      } catch {
        return true; // no /proc: trust the signal
      }
    };
    await until(stopped, 10000, "the hub to stop");
  }
  /** Lets a frozen hub run on (SIGCONT). */
  thaw() {
    this.proc.kill("SIGCONT");
  }
  /** Stops and starts again on the same data directory and address. */
  async restart() {
    const addr = this.addr;
    await this.stop();
    for (let i = 0; ; i++) {
      try {
        return await this.start(addr);
      } catch (e) {
        if (i > 20) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }
  async dispose() {
    await this.stop();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * Settings of a hub that authenticates, for tests: the admin and its password, and cheap
 * password hashing (a config file; Argon2's default cost is slow in a debug build of the hub).
 */
export function secureEnv({ username, password }, extra = {}) {
  const dir = mkdtempSync(join(tmpdir(), "flowhub-ts-conf-"));
  const file = join(dir, "flowhub.toml");
  writeFileSync(file, "[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n");
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  return {
    FLOWHUB_CONFIG: file,
    FLOWHUB_AUTH: "on",
    FLOWHUB_ADMIN_USER: username,
    FLOWHUB_ADMIN_PASSWORD: password,
    ...extra,
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves when `pred()` holds, polling; rejects after `timeout`. */
export async function until(pred, timeout = 5000, what = "condition") {
  const end = Date.now() + timeout;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await sleep(10);
  }
}

export function freshNs() {
  return "t" + Math.random().toString(36).slice(2, 10);
}
