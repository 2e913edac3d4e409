//! htpasswd files: any text parses (bad lines become warnings); every hash it keeps
//! can be checked. bcrypt is checked only at low costs, which are what it tests.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::auth::htpasswd::Htpasswd;

fuzz_target!(|text: &str| {
    let file = Htpasswd::parse(text, "fuzz.htpasswd");
    for line in text.lines() {
        let Some((user, _)) = line.trim().split_once(':') else {
            continue;
        };
        if let Some(hash) = file.get(user) {
            if hash.bcrypt_cost().is_none_or(|cost| cost <= 5) {
                hash.verify("password");
            }
        }
    }
});
