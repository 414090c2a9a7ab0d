//! Runs one saved fuzz input through a fuzz body, for debugging a failure
//! that `cargo test` or libFuzzer saved:
//! `cargo run -p baton-jepsen --example fuzz_input -- apply target/jepsen-failures/fuzz-apply-….bin`

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(target), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: fuzz_input <decode_request|apply> <input file>");
        std::process::exit(2);
    };
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    match target.as_str() {
        "decode_request" => baton_jepsen::fuzz::decode_request(&data),
        "apply" => baton_jepsen::fuzz::apply_commands(&data),
        other => panic!("unknown fuzz target {other:?}"),
    }
    println!("{target}: {path} passes");
}
