//! CRC-64 verification throughput next to a plain memory copy of the same buffer, on one core.
//!
//! `cargo bench --bench crc64 [-- --json] [-- --seconds S]`: prints one line per kernel, or a
//! JSON object for the harness (`benches/run.sh`). Built with the release profile (the bench
//! profile inherits it), so it measures the code the agent ships.
//!
//! Kernels: `memcpy` (the floor every byte pays anyway), the agent's `Crc64Nvme`/`Crc64Xz`
//! (what verifies every download), and the `crc` crate's table variants for reference.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sgw_agent::cache::crc64::{Crc64Nvme, Crc64Xz};

/// The download loop's read buffer size: CRC is updated in chunks of at most this.
const CHUNK: usize = 256 * 1024;
/// Large enough to leave L2 on most cores, small enough to stay in L3 on a server.
const BUFFER: usize = 8 * 1024 * 1024;

struct Measured {
    name: &'static str,
    mb_per_s: f64,
}

/// Run `pass` over the whole buffer until `budget` is spent; best of five slices of it.
fn measure(name: &'static str, budget: Duration, mut pass: impl FnMut() -> u64) -> Measured {
    // Warm up: page in the buffers, let the CPU reach its clock.
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        black_box(pass());
    }
    let slice = budget / 5;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed() < slice {
            bytes += black_box(pass());
        }
        let rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
        best = best.max(rate);
    }
    Measured {
        name,
        mb_per_s: best,
    }
}

fn main() {
    let mut json = false;
    let mut seconds = 1.0f64;
    // `cargo test --all-targets` runs this without arguments: a short smoke run is enough
    // there; `cargo bench` passes `--bench`.
    if std::env::args().len() == 1 {
        seconds = 0.05;
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--json" => json = true,
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .unwrap_or_else(|| {
                        eprintln!("--seconds needs a positive number");
                        std::process::exit(64)
                    })
            }
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other:?} (expected --json, --seconds S)");
                std::process::exit(64)
            }
        }
    }
    let budget = Duration::from_secs_f64(seconds);

    // Not all zeros: a kernel must not get a free ride on a trivial pattern.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let src: Vec<u8> = (0..BUFFER)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut dst = vec![0u8; BUFFER];

    let table1 = crc::Crc::<u64, crc::Table<1>>::new(&crc::CRC_64_NVME);
    let table16 = crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_NVME);

    let results = [
        measure("memcpy", budget, || {
            for (d, s) in dst.chunks_mut(CHUNK).zip(src.chunks(CHUNK)) {
                d.copy_from_slice(black_box(s));
            }
            black_box(&mut dst);
            BUFFER as u64
        }),
        measure("crc64nvme (agent)", budget, || {
            let mut c = Crc64Nvme::new();
            for s in src.chunks(CHUNK) {
                c.update(black_box(s));
            }
            black_box(c.finish());
            BUFFER as u64
        }),
        measure("crc64xz (agent)", budget, || {
            let mut c = Crc64Xz::new();
            for s in src.chunks(CHUNK) {
                c.update(black_box(s));
            }
            black_box(c.finish());
            BUFFER as u64
        }),
        measure("crc64nvme (crc crate, 1 table)", budget, || {
            let mut d = table1.digest();
            for s in src.chunks(CHUNK) {
                d.update(black_box(s));
            }
            black_box(d.finalize());
            BUFFER as u64
        }),
        measure("crc64nvme (crc crate, 16 tables)", budget, || {
            let mut d = table16.digest();
            for s in src.chunks(CHUNK) {
                d.update(black_box(s));
            }
            black_box(d.finalize());
            BUFFER as u64
        }),
    ];

    if json {
        let fields: Vec<String> = results
            .iter()
            .map(|m| format!("{:?}: {:.0}", m.name, m.mb_per_s))
            .collect();
        println!(
            "{{\"arch\": {:?}, \"buffer_bytes\": {BUFFER}, \"chunk_bytes\": {CHUNK}, \"mb_per_s\": {{{}}}}}",
            std::env::consts::ARCH,
            fields.join(", ")
        );
    } else {
        println!(
            "{} buffer of {} MiB in {} KiB chunks, one thread, MB/s (10^6 bytes/s):",
            std::env::consts::ARCH,
            BUFFER >> 20,
            CHUNK >> 10
        );
        for m in &results {
            println!("  {:<34} {:>9.0}", m.name, m.mb_per_s);
        }
    }
}
