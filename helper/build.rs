//! Link libsanlock_client (Debian: libsanlock-dev). pkg-config gives the
//! search path when the library lives somewhere unusual; without pkg-config
//! the plain library name is enough on Debian.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let out = Command::new("pkg-config")
        .args(["--libs", "libsanlock_client"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let libs = String::from_utf8_lossy(&o.stdout);
            for flag in libs.split_whitespace() {
                if let Some(dir) = flag.strip_prefix("-L") {
                    println!("cargo:rustc-link-search=native={dir}");
                } else if let Some(lib) = flag.strip_prefix("-l") {
                    println!("cargo:rustc-link-lib={lib}");
                }
            }
        }
        _ => {
            println!(
                "cargo:warning=pkg-config found no libsanlock_client (apt-get install \
                 libsanlock-dev pkg-config); trying -lsanlock_client"
            );
            println!("cargo:rustc-link-lib=sanlock_client");
        }
    }
}
