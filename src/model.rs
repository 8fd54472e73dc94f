//! `iai-mcp model`: installs the embedding model semantic recall uses, from
//! files the user already has (nothing is ever downloaded). The files are
//! checked as the storer will read them, then copied into the home's
//! `model/` directory, private to the user; the storer reads them at the
//! next unlock before its sandbox closes, and parses them inside it.

use std::fs::{DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use iai_policy::Home;
use iai_storer::embed::{self, Model};

pub fn install(home: &Home, weights: &Path, tokenizer: &Path) -> Result<()> {
    if !home.root().is_dir() {
        bail!("{} does not exist: run `iai-mcp init` first", home.root().display());
    }
    let started = Instant::now();
    let wbytes = embed::read_bounded(weights, embed::MAX_WEIGHTS_BYTES, "weights").map_err(anyhow::Error::msg)?;
    let tbytes = embed::read_bounded(tokenizer, embed::MAX_TOKENIZER_BYTES, "tokenizer").map_err(anyhow::Error::msg)?;
    let model = Model::from_bytes(&wbytes, &tbytes).map_err(|why| {
        anyhow::anyhow!("{} and {} are not a model iai-mcp can use: {why}", weights.display(), tokenizer.display())
    })?;
    let load_ms = started.elapsed().as_millis();
    let dir = embed::model_dir(home);
    // A fixed name the audit knows: an install killed before its rename
    // leaves it, and the next install removes it.
    let tmp = home.root().join(".model.new");
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> Result<()> {
        DirBuilder::new().mode(0o700).create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        for (name, bytes) in [(embed::WEIGHTS_FILE, &wbytes), (embed::TOKENIZER_FILE, &tbytes)] {
            let path = tmp.join(name);
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        File::open(&tmp).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", tmp.display()))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move the model into {}", dir.display()))?;
        File::open(home.root())
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", home.root().display()))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let info = model.info();
    println!(
        "Installed the embedding model in {} ({} tokens, vectors of {} values, id {}; checked in {load_ms} ms).",
        dir.display(),
        info.tokens,
        info.dim,
        info.id
    );
    println!("Recall uses it from the next unlock; memories captured before then get their vectors at that unlock.");
    if iai_policy::home_check::flock_holder(&home.pid_file()).is_some() {
        println!("The store is unlocked now: run `iai-mcp lock` and `iai-mcp unlock` to start using it.");
    }
    Ok(())
}

pub fn remove(home: &Home) -> Result<()> {
    let dir = embed::model_dir(home);
    if !dir.exists() {
        println!("No embedding model is installed; recall uses words only (BM25).");
        return Ok(());
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    println!("Removed the embedding model. From the next unlock recall uses words only (BM25).");
    Ok(())
}

pub fn status(home: &Home) -> Result<()> {
    match Model::installed(&embed::model_dir(home)) {
        Ok(None) => println!("No embedding model is installed; recall uses words only (BM25)."),
        Ok(Some(m)) => {
            let i = m.info();
            println!("Embedding model installed: {} tokens, vectors of {} values, id {}.", i.tokens, i.dim, i.id)
        }
        Err(why) => {
            bail!("the installed embedding model cannot be used: {why}; reinstall it with `iai-mcp model install`")
        }
    }
    Ok(())
}
