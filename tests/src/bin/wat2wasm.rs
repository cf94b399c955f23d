//! `wat2wasm IN.wat OUT.wasm`: assembles a WAT module (for the end-to-end test and for
//! trying the examples without a WebAssembly toolchain).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: wat2wasm IN.wat OUT.wasm");
        return ExitCode::from(2);
    };
    match wat::parse_file(input)
        .map_err(|e| e.to_string())
        .and_then(|b| std::fs::write(output, b).map_err(|e| format!("{output}: {e}")))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wat2wasm: {e}");
            ExitCode::FAILURE
        }
    }
}
