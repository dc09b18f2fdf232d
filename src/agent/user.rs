//! `--app-user`: the app runs as another user than the agent, as s6-setuidgid runs it, so that it cannot
//! read what only the agent should (a cluster key file, the agent's own `/proc` files), nor signal it.

use std::path::Path;

/// The user and group the app runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppUser {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl AppUser {
    /// `USER[:GROUP]`, each a number or a name in the image's `/etc/passwd` and `/etc/group` (a scratch image
    /// has neither: use numbers). Without a group, the user's own from `/etc/passwd`, else the same number.
    pub fn parse(text: &str) -> Result<AppUser, String> {
        Self::parse_with(text, Path::new("/etc/passwd"), Path::new("/etc/group"))
    }

    fn parse_with(text: &str, passwd: &Path, group: &Path) -> Result<AppUser, String> {
        let (user, wanted_group) = match text.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (text, None),
        };
        let users = std::fs::read_to_string(passwd).unwrap_or_default();
        // (name, uid, gid) of each well-formed line (name:password:uid:gid:...).
        let entries: Vec<(&str, u32, u32)> = users
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4)
            .filter_map(|f| Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?)))
            .collect();
        let (uid, own_gid) = match user.parse::<u32>() {
            Ok(uid) => (uid, entries.iter().find(|e| e.1 == uid).map_or(uid, |e| e.2)),
            Err(_) if user.is_empty() => return Err("no user given".into()),
            Err(_) => entries
                .iter()
                .find(|e| e.0 == user)
                .map(|e| (e.1, e.2))
                .ok_or_else(|| format!("no user {user:?} in {}", passwd.display()))?,
        };
        let gid = match wanted_group {
            None => own_gid,
            Some("") => return Err("no group after ':'".into()),
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => std::fs::read_to_string(group)
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| format!("no group {g:?} in {}", group.display()))?,
            },
        };
        if uid == 0 {
            return Err("the app would run as root: leave --app-user out for that".into());
        }
        Ok(AppUser { uid, gid })
    }

    /// Takes the identity in a child between fork and exec: its groups, then its group, then its user (after
    /// which it could not change the others). Async-signal-safe: system calls only, no allocation.
    ///
    /// # Safety
    /// Call it only in `pre_exec`.
    pub unsafe fn assume(self) -> std::io::Result<()> {
        if libc::setgroups(1, &self.gid) != 0 || libc::setgid(self.gid) != 0 || libc::setuid(self.uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The capabilities `--app-user` needs that this process lacks: CAP_SETUID and CAP_SETGID to change user,
/// CAP_KILL to signal the app's processes (forwarded signals, its stop, the parent-death signal) once they
/// are another user's. Read from `/proc/self/status`; none missing if it cannot be read.
pub fn missing_capabilities() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return Vec::new();
    };
    [(5, "CAP_KILL"), (6, "CAP_SETGID"), (7, "CAP_SETUID")]
        .into_iter()
        .filter(|&(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_by_number_or_by_name() {
        let dir = std::env::temp_dir().join(format!("shoal-app-user-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (passwd, group) = (dir.join("passwd"), dir.join("group"));
        std::fs::write(&passwd, "root:x:0:0::/root:/bin/sh\nnode:x:x:1:\nnode:x:1000:1000::/home/node:/bin/sh\nodd\n")
            .unwrap();
        std::fs::write(&group, "root:x:0:\nweb:x:33:\n").unwrap();
        let parse = |t: &str| AppUser::parse_with(t, &passwd, &group);
        assert_eq!(parse("node"), Ok(AppUser { uid: 1000, gid: 1000 }));
        assert_eq!(parse("node:web"), Ok(AppUser { uid: 1000, gid: 33 }));
        assert_eq!(parse("1000:7"), Ok(AppUser { uid: 1000, gid: 7 }));
        assert_eq!(parse("1000"), Ok(AppUser { uid: 1000, gid: 1000 }), "the user's own group");
        assert_eq!(parse("65534"), Ok(AppUser { uid: 65534, gid: 65534 }), "a number no file knows");
        assert_eq!(parse("01000"), Ok(AppUser { uid: 1000, gid: 1000 }), "a number is a number");
        assert!(parse("nobody").unwrap_err().contains("no user \"nobody\""));
        assert!(parse("node:nogroup").unwrap_err().contains("no group \"nogroup\""));
        assert!(parse("root").unwrap_err().contains("root"));
        assert!(parse("0:5").unwrap_err().contains("root"));
        assert!(parse("node:").is_err() && parse("").is_err() && parse(":5").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
