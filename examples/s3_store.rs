//! The embedded S3-compatible store (s3s-fs, signature checking on) as a process, for the
//! load bench: `s3_store ROOT ACCESS_KEY SECRET_KEY ADDR_FILE` serves bucket `bench` on an
//! ephemeral 127.0.0.1 port, writes that address to ADDR_FILE, and runs until killed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, ak, sk, addr_file] = args.as_slice() else {
        return Err("usage: s3_store ROOT ACCESS_KEY SECRET_KEY ADDR_FILE".into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = portier::s3::start(root.into(), "bench", ak, sk).await?;
        std::fs::write(addr_file, store.addr.to_string())?;
        std::future::pending::<()>().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
