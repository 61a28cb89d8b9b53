//! AES-256-GCM through aws-lc-rs: sealing and opening storage envelopes of several
//! sizes, and wrapping and unwrapping a DEK under the KEK.
//!
//! Run with `cargo xtask bench` (or `cargo bench -p sealkv-encryption`).

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sealkv_encryption::envelope::{AadMode, Dek, Keystore, NONCE_LEN};
use sealkv_encryption::kek::{Kek, unwrap_dek, wrap_dek};

const KEY_ID: u32 = 7;

fn envelopes(c: &mut Criterion) {
    let mut keys = Keystore::new();
    keys.insert(KEY_ID, Dek::from_bytes([0x42; 32]))
        .expect("insert");
    // Value header ‖ storage key, as the store builds the AAD context.
    let context = [0u8; 9 + 24];
    let mut group = c.benchmark_group("envelope");
    for size in [64usize, 1024, 16 * 1024] {
        let plaintext = vec![0xAB; size];
        group.throughput(Throughput::Bytes(size as u64));
        let mut counter = 0u64;
        group.bench_function(format!("seal_{size}B"), |b| {
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; NONCE_LEN];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                keys.seal_envelope(
                    0,
                    KEY_ID,
                    nonce,
                    &plaintext,
                    AadMode::Storage { context: &context },
                )
                .expect("seal")
            });
        });
        let sealed = keys
            .seal_envelope(
                0,
                KEY_ID,
                [1; NONCE_LEN],
                &plaintext,
                AadMode::Storage { context: &context },
            )
            .expect("seal");
        group.bench_function(format!("open_{size}B"), |b| {
            b.iter(|| {
                keys.open_envelope(&sealed, AadMode::Storage { context: &context })
                    .expect("open")
            });
        });
    }
    group.finish();

    let kek = Kek::from_bytes([0x11; 32]);
    let dek = [0x22u8; 32];
    c.bench_function("kek/wrap_dek", |b| {
        b.iter(|| wrap_dek(&kek, &dek).expect("wrap"))
    });
    let wrapped = wrap_dek(&kek, &dek).expect("wrap");
    c.bench_function("kek/unwrap_dek", |b| {
        b.iter(|| unwrap_dek(&kek, &wrapped).expect("unwrap"))
    });
}

criterion_group!(benches, envelopes);
criterion_main!(benches);
