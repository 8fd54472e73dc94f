//! Unlock at login, opt-in: `iai-mcp keyring enable|disable|status` and
//! `unlock --keyring`.
//!
//! `enable` makes a random secret (256 bits), stores it in the user's login
//! keyring through the freedesktop Secret Service (gnome-keyring, KWallet,
//! KeePassXC), and adds a key slot that it opens. The passphrase never goes
//! to the keyring. The trade: any process of the user that can reach the
//! unlocked keyring can then unlock the store; `audit` says so while it is
//! enabled. `disable` removes the slot first (that is what revokes it), then
//! the secret.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use iai_keyholder::keyfile::{SlotKind, MIN_M_KIB};
use iai_keyholder::{KdfParams, KeyFile, KeyFileError, Passphrase};
use iai_policy::Home;
use secret_service::blocking::{Item, SecretService};
use secret_service::EncryptionType;

use crate::passphrase;

/// Random bytes of the keyring secret.
const SECRET_BYTES: usize = 32;
const APPLICATION: &str = "iai-mcp";

/// The attributes that find this home's secret (and nothing else).
fn attributes(home: &Home) -> HashMap<&'static str, String> {
    HashMap::from([("application", APPLICATION.to_string()), ("iai-mcp-home", home.root().display().to_string())])
}

fn as_refs<'a>(a: &'a HashMap<&'static str, String>) -> HashMap<&'a str, &'a str> {
    a.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A connection to the Secret Service, or a plain explanation of why not.
fn connect() -> Result<SecretService<'static>> {
    SecretService::connect(EncryptionType::Dh).map_err(|e| {
        anyhow!(
            "no Secret Service is reachable ({e}): unlocking at login needs a running keyring that implements \
             it (gnome-keyring, KWallet, KeePassXC) on your D-Bus session bus"
        )
    })
}

fn search<'a>(ss: &'a SecretService<'a>, home: &Home) -> Result<Vec<Item<'a>>> {
    let attrs = attributes(home);
    let found = ss.search_items(as_refs(&attrs)).context("cannot search the keyring")?;
    Ok(found.unlocked.into_iter().chain(found.locked).collect())
}

/// This home's secret from the keyring (unlocking the item if the keyring
/// asks for it).
pub fn fetch(home: &Home) -> Result<Passphrase> {
    let ss = connect()?;
    let items = search(&ss, home)?;
    let item = items.first().ok_or_else(|| {
        anyhow!(
            "your keyring holds no iai-mcp secret for {} (`iai-mcp keyring enable` adds one)",
            home.root().display()
        )
    })?;
    if item.is_locked().unwrap_or(true) {
        item.unlock().context("your keyring is locked and was not unlocked")?;
    }
    let secret = zeroize::Zeroizing::new(item.get_secret().context("cannot read the secret from the keyring")?);
    Ok(Passphrase::from_slice(&secret))
}

/// Deletes this home's secrets from the keyring; returns how many.
fn delete_all(home: &Home) -> Result<usize> {
    let ss = connect()?;
    let items = search(&ss, home)?;
    for item in &items {
        item.delete().context("cannot delete the secret from the keyring")?;
    }
    Ok(items.len())
}

fn new_secret() -> Result<Passphrase> {
    let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
    getrandom::getrandom(bytes.as_mut()).map_err(|_| anyhow!("the system's random number generator failed"))?;
    let text = zeroize::Zeroizing::new(data_encoding::BASE32_NOPAD.encode(bytes.as_ref()));
    Ok(Passphrase::from_slice(text.as_bytes()))
}

/// The trade, said when it is made and by `audit` while it stands.
pub const TRADE: &str = "any program running as you that can reach your unlocked keyring can now unlock the store \
(as it could read the keyring's other secrets); `iai-mcp keyring disable` ends it";

pub fn enable(home: &Home, passphrase_fd: Option<i32>) -> Result<()> {
    // Reachable first: nothing is asked or changed when there is no keyring.
    let ss = connect()?;
    let collection = ss.get_default_collection().context("your keyring has no default collection")?;
    if collection.is_locked().unwrap_or(true) {
        collection.unlock().context("your keyring is locked and was not unlocked; log in or unlock it, then retry")?;
    }
    let change = crate::keys::begin(home)?;
    let pass = passphrase::obtain(passphrase_fd, false)?;
    let dek = change.file.unwrap(&pass).map_err(|e| match e {
        KeyFileError::WrongPassphrase => anyhow!("wrong passphrase; nothing was changed"),
        other => anyhow!("{other}; nothing was changed"),
    })?;
    let secret = new_secret()?;
    let params = KdfParams::new(MIN_M_KIB, 1, 1).map_err(|e| anyhow!("{e}"))?;
    let new = change
        .file
        .with_slot(&dek, SlotKind::Keyring, &secret, params, Some(&pass))
        .map_err(|e| anyhow!("cannot wrap the key: {e}; nothing was changed"))?;
    drop(pass);
    let attrs = attributes(home);
    let label = format!("iai-mcp: unlocks the memory store {}", home.root().display());
    collection
        .create_item(&label, as_refs(&attrs), secret.expose(), true, "text/plain")
        .context("cannot store the secret in the keyring; nothing was changed")?;
    if let Err(e) = change.commit(&new, Some((SlotKind::Keyring, &secret, &dek))) {
        // The key file was not changed: the secret must not linger.
        let _ = delete_all(home);
        return Err(e);
    }
    println!("unlocking from your keyring is enabled: `iai-mcp unlock --keyring` needs no passphrase");
    println!("the trade: {TRADE}");
    Ok(())
}

pub fn disable(home: &Home) -> Result<()> {
    let change = crate::keys::begin(home)?;
    let had_slot = change.file.slot(SlotKind::Keyring).is_some();
    if had_slot {
        let new = change.file.without_slot(SlotKind::Keyring).map_err(|e| anyhow!("{e}"))?;
        change.commit(&new, None)?;
        println!(
            "the keyring's key slot is removed from {}: the keyring can no longer unlock it",
            home.key().display()
        );
    } else {
        drop(change);
    }
    match delete_all(home) {
        Ok(0) if !had_slot => bail!("unlocking from the keyring was not enabled; nothing was changed"),
        Ok(0) => println!("your keyring held no iai-mcp secret for this store"),
        Ok(n) => println!("the secret is deleted from your keyring ({n} item{})", if n == 1 { "" } else { "s" }),
        Err(e) if had_slot => eprintln!(
            "iai-mcp: WARNING: could not delete the secret from your keyring ({e:#}); it no longer opens anything, \
             but remove the item \"iai-mcp: unlocks the memory store …\" by hand"
        ),
        Err(e) => return Err(e),
    }
    Ok(())
}

pub fn status(home: &Home) -> Result<()> {
    let file = KeyFile::parse(&crate::backup::read_key(&home.key())?).context("the key file does not parse")?;
    let slot = file.slot(SlotKind::Keyring).is_some();
    let stored = connect().and_then(|ss| search(&ss, home).map(|i| !i.is_empty()));
    match (slot, stored) {
        (true, Ok(true)) => println!("enabled: `iai-mcp unlock --keyring` unlocks with the secret in your keyring"),
        (true, Ok(false)) => println!(
            "the key file has a keyring slot, but your keyring holds no secret for it: run `iai-mcp keyring disable`, \
             then `enable` again"
        ),
        (true, Err(e)) => println!("the key file has a keyring slot, but {e:#}"),
        (false, Ok(true)) => {
            println!("not enabled (your keyring holds a stale secret: `iai-mcp keyring disable` removes it)")
        }
        (false, _) => println!("not enabled"),
    }
    Ok(())
}

/// For a rotation: the keyring's secret, checked against the old key file,
/// when the store has a keyring slot; none (and the slot is dropped, said
/// so) when the keyring cannot give it.
pub fn secret_for_rotation(home: &Home, file: &KeyFile, dek: &iai_keyholder::Dek) -> Option<Passphrase> {
    file.slot(SlotKind::Keyring)?;
    match fetch(home) {
        Ok(s) if file.unwrap_with(SlotKind::Keyring, &s).is_ok_and(|d| d.expose() == dek.expose()) => Some(s),
        Ok(_) => {
            eprintln!("the keyring's secret no longer opens the key; unlocking from the keyring is dropped");
            None
        }
        Err(e) => {
            eprintln!("unlocking from the keyring is dropped ({e:#}); `iai-mcp keyring enable` sets it up again");
            None
        }
    }
}
