//! Parsing of guest console lines printed by the guest image's `/init`.

/// Errors while parsing a guest banner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("guest banner has no `{0}=` field: {1:?}")]
    MissingField(&'static str, String),
    #[error("guest banner field `{0}` has an invalid value: {1:?}")]
    BadField(&'static str, String),
}

/// One virtio device as listed in the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioDev {
    /// sysfs name, e.g. `virtio0`.
    pub name: String,
    /// virtio device ID (4 = entropy).
    pub device_id: u32,
    /// Bound driver, `None` if unbound.
    pub driver: Option<String>,
}

/// The `XPMEM-GUEST READY` banner.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    /// Guest name (`xpmem.name=`).
    pub name: String,
    /// CPUs online.
    pub cpus: u32,
    /// virtio devices.
    pub virtio: Vec<VirtioDev>,
    /// Guest uptime in seconds when the banner was printed.
    pub uptime: Option<f64>,
}

impl Ready {
    /// True if a device with this id is bound to this driver.
    pub fn has_bound(&self, device_id: u32, driver: &str) -> bool {
        self.virtio
            .iter()
            .any(|d| d.device_id == device_id && d.driver.as_deref() == Some(driver))
    }
}

/// A parsed interesting guest line.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The readiness banner.
    Ready(Ready),
    /// The configured command finished with this exit code.
    Result { name: String, rc: i32 },
    /// An init error (e.g. insmod failed).
    InitError(String),
    /// The guest kernel panicked.
    Panic(String),
}

fn field<'a>(words: &[&'a str], key: &'static str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Parses the part of `line` after `XPMEM-GUEST READY `.
pub fn parse_ready(rest: &str) -> Result<Ready, Error> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let name = words
        .first()
        .filter(|w| !w.contains('='))
        .ok_or(Error::MissingField("name", rest.to_string()))?
        .to_string();
    let cpus_s = field(&words, "cpus").ok_or(Error::MissingField("cpus", rest.to_string()))?;
    let cpus = cpus_s
        .parse()
        .map_err(|_| Error::BadField("cpus", cpus_s.to_string()))?;
    let virtio_s =
        field(&words, "virtio").ok_or(Error::MissingField("virtio", rest.to_string()))?;
    let mut virtio = Vec::new();
    if virtio_s != "none" {
        for item in virtio_s.split(',') {
            let parts: Vec<&str> = item.split(':').collect();
            let [dev, id, drv] = parts[..] else {
                return Err(Error::BadField("virtio", item.to_string()));
            };
            let id_num = id.strip_prefix("0x").unwrap_or(id);
            let device_id = u32::from_str_radix(id_num, 16)
                .map_err(|_| Error::BadField("virtio", item.to_string()))?;
            virtio.push(VirtioDev {
                name: dev.to_string(),
                device_id,
                driver: (drv != "none").then(|| drv.to_string()),
            });
        }
    }
    let uptime = field(&words, "uptime").and_then(|u| u.parse().ok());
    Ok(Ready {
        name,
        cpus,
        virtio,
        uptime,
    })
}

/// Classifies one guest console line (any prefix before the marker is ignored).
pub fn parse_line(line: &str) -> Option<Result<Event, Error>> {
    if let Some((_, rest)) = line.split_once("XPMEM-GUEST READY ") {
        return Some(parse_ready(rest).map(Event::Ready));
    }
    if let Some((_, rest)) = line.split_once("XPMEM-GUEST RESULT ") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let name = words.first().map(|s| s.to_string()).unwrap_or_default();
        let rc = field(&words, "rc").and_then(|r| r.parse().ok());
        return Some(match rc {
            Some(rc) => Ok(Event::Result { name, rc }),
            None => Err(Error::BadField("rc", rest.to_string())),
        });
    }
    if let Some((_, rest)) = line.split_once("XPMEM-GUEST ERROR ") {
        return Some(Ok(Event::InitError(rest.to_string())));
    }
    if let Some((_, rest)) = line.split_once("Kernel panic - not syncing") {
        return Some(Ok(Event::Panic(
            rest.trim_start_matches(':').trim().to_string(),
        )));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn banner_is_parsed() {
        let line = "[vm-a] XPMEM-GUEST READY vm-a cpus=2 virtio=virtio0:0x0004:virtio_rng,virtio1:0x002a:none uptime=5.31";
        let Some(Ok(Event::Ready(r))) = parse_line(line) else {
            panic!("not parsed: {line}");
        };
        assert_eq!(r.name, "vm-a");
        assert_eq!(r.cpus, 2);
        assert_eq!(r.virtio.len(), 2);
        assert!(r.has_bound(4, "virtio_rng"));
        assert!(!r.has_bound(0x2a, "xpmem"));
        assert_eq!(r.virtio[1].driver, None);
        assert_eq!(r.uptime, Some(5.31));
    }

    #[test]
    fn banner_without_devices() {
        let Some(Ok(Event::Ready(r))) = parse_line("XPMEM-GUEST READY g cpus=1 virtio=none") else {
            panic!("not parsed");
        };
        assert!(r.virtio.is_empty());
        assert_eq!(r.uptime, None);
    }

    #[test]
    fn malformed_banners_are_errors() {
        assert!(matches!(
            parse_line("XPMEM-GUEST READY g virtio=none"),
            Some(Err(Error::MissingField("cpus", _)))
        ));
        assert!(matches!(
            parse_line("XPMEM-GUEST READY g cpus=x virtio=none"),
            Some(Err(Error::BadField("cpus", _)))
        ));
        assert!(matches!(
            parse_line("XPMEM-GUEST READY g cpus=1 virtio=virtio0:zz:x"),
            Some(Err(Error::BadField("virtio", _)))
        ));
        assert!(matches!(
            parse_line("XPMEM-GUEST READY cpus=1 virtio=none"),
            Some(Err(Error::MissingField("name", _)))
        ));
    }

    #[test]
    fn results_errors_and_panics() {
        assert_eq!(
            parse_line("XPMEM-GUEST RESULT vm-b rc=3"),
            Some(Ok(Event::Result {
                name: "vm-b".into(),
                rc: 3
            }))
        );
        assert!(matches!(
            parse_line("[    1.0] Kernel panic - not syncing: VFS: Unable to mount root"),
            Some(Ok(Event::Panic(_)))
        ));
        assert_eq!(parse_line("random output"), None);
    }
}
