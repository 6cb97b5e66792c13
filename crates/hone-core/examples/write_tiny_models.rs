//! Write the tiny random model suite (GGUF files + manifest.json) into a folder, for
//! scripts/make_logits_fixtures.py: `cargo run --release -p hone-core --example write_tiny_models -- DIR`.

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: write_tiny_models DIR");
        std::process::exit(2);
    };
    match hone_core::fixtures::write_tiny_suite(std::path::Path::new(&dir)) {
        Ok(cases) => {
            for (case, _) in cases {
                println!("{}", case.name);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
