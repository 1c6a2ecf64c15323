//! The embedded S3-compatible store (s3s-fs, signature checking on) as a process, for the
//! load bench: `s3_store ROOT ACCESS_KEY SECRET_KEY ADDR_FILE` serves bucket `bench` on an
//! ephemeral 127.0.0.1 port, writes that address to ADDR_FILE, and runs until killed.
//! With ROOT `mem` the objects are kept in memory instead (`common/mem_store.rs`: s3s still
//! checks every signature, but the store is not the bottleneck of a bench).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/mem_store.rs"]
mod mem_store;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, ak, sk, addr_file] = args.as_slice() else {
        return Err("usage: s3_store ROOT|mem ACCESS_KEY SECRET_KEY ADDR_FILE".into());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Kept alive until the process is killed: dropping the store stops it.
        let mut fs_store = None;
        let addr = if root == "mem" {
            mem_store::start("bench", ak, sk).await?
        } else {
            let store = portier::s3::start(root.into(), "bench", ak, sk).await?;
            let addr = store.addr;
            fs_store = Some(store);
            addr
        };
        std::fs::write(addr_file, addr.to_string())?;
        std::future::pending::<()>().await;
        drop(fs_store);
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
