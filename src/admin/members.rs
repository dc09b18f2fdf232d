//! `shoal members`: the cluster as a proxy sees it, read from its admin side (`/members`), printed as
//! `serf members` prints it, or as JSON.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::cluster::roster::Row;
use crate::config::MembersArgs;

pub fn run(args: &MembersArgs) -> Result<String, String> {
    let rows = fetch(&args.admin, args.admin_auth.as_deref())?;
    let wanted_tags: Vec<(&str, &str)> = args.tags.iter().filter_map(|t| t.split_once('=')).collect();
    if wanted_tags.len() != args.tags.len() {
        return Err("`tag`: expected K=V".into());
    }
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|r| args.status.as_ref().is_none_or(|s| &r.status == s))
        .filter(|r| wanted_tags.iter().all(|(k, v)| r.tags.iter().any(|(rk, rv)| rk == k && rv == v)))
        .collect();
    if args.format == "json" {
        return serde_json::to_string_pretty(&rows).map_err(|e| e.to_string());
    }
    Ok(table(&rows))
}

/// One line per member: name, gossip address, status, role, service, tags (as `serf members` has them).
pub fn table(rows: &[Row]) -> String {
    let lines: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let tags = r.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            [
                r.name.clone(),
                r.address.clone(),
                r.status.clone(),
                r.role.clone(),
                r.service.clone().unwrap_or_default(),
                tags,
            ]
        })
        .collect();
    let mut widths = [4, 7, 6, 4, 7, 4];
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = ["Node", "Address", "Status", "Role", "Service", "Tags"].map(String::from);
    for l in std::iter::once(&header).chain(&lines) {
        let cells: Vec<String> = l.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Where to reach a proxy's listener given the proxy's own setting for it (`SHOAL_ADMIN`, `--admin`), which
/// may be a listen address (`:1936`, `0.0.0.0:1936`: this host's loopback then) or `off`; anything else is a
/// `HOST:PORT`. `what` and `flag` name the listener and its setting in the error.
pub(crate) fn connect_address(addr: &str, what: &str, flag: &str) -> Result<String, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match crate::config::value::optional_listen_addr(addr) {
        Ok(crate::config::value::Endpoint(None)) => {
            Err(format!("the {what} is {addr:?}: give the address to reach (--{flag} ADDR)"))
        }
        Ok(crate::config::value::Endpoint(Some(mut at))) => {
            if at.ip().is_unspecified() {
                at.set_ip(if at.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) });
            }
            Ok(at.to_string())
        }
        Err(_) => Ok(addr.to_string()),
    }
}

fn fetch(admin: &str, auth: Option<&str>) -> Result<Vec<Row>, String> {
    let admin = &connect_address(admin, "admin listener", "admin")?;
    let fail = |e: std::io::Error| format!("cannot read {admin}/members: {e}");
    let mut stream = TcpStream::connect(admin).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(fail)?;
    let credentials = auth.map_or(String::new(), |a| format!("Authorization: {}\r\n", super::basic_credentials(a)));
    let request = format!("GET /members HTTP/1.1\r\nHost: {admin}\r\n{credentials}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(fail)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("{admin}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(format!("{admin}/members: {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{admin}/members: {e}"))
}
