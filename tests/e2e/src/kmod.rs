//! Resolution of kernel module dependencies from `modules.dep`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Errors while resolving kernel modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source} (run `depmod -b <root> <version>` to create it)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed line {line} in {path}: expected `module.ko: deps...`")]
    Malformed { path: PathBuf, line: usize },
    #[error("kernel module `{0}` is not in modules.dep of this kernel; check the name (e.g. virtio_mmio, kvm-amd)")]
    Unknown(String),
    #[error("dependency cycle involving kernel module `{0}` in modules.dep")]
    Cycle(String),
}

/// Canonical module name: basename without `.ko[.xz|.zst|.gz]`, `-` folded to `_`.
pub fn canonical_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The dependency index of one kernel's module tree.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    root: PathBuf,
    /// canonical name -> (relative path, dependency canonical names)
    modules: BTreeMap<String, (String, Vec<String>)>,
}

impl ModuleIndex {
    /// Parses `<modules_dir>/modules.dep` (`modules_dir` is `/lib/modules/<version>`).
    pub fn load(modules_dir: &Path) -> Result<Self, Error> {
        let path = modules_dir.join("modules.dep");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(modules_dir, &path, &text)
    }

    fn parse(root: &Path, path: &Path, text: &str) -> Result<Self, Error> {
        let mut modules = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, deps) = line.split_once(':').ok_or_else(|| Error::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
            })?;
            let deps = deps.split_whitespace().map(canonical_name).collect();
            modules.insert(canonical_name(module), (module.trim().to_string(), deps));
        }
        Ok(Self {
            root: root.to_path_buf(),
            modules,
        })
    }

    /// Returns the files to load, dependencies first, for the requested modules, in
    /// the order requested. Every module appears once.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Vec<PathBuf>, Error> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            let mut in_progress = BTreeSet::new();
            self.visit(&canonical_name(w), &mut done, &mut in_progress, &mut order)?;
        }
        Ok(order
            .into_iter()
            .map(|n| self.root.join(&self.modules[&n].0))
            .collect())
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        in_progress: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), Error> {
        if done.contains(name) {
            return Ok(());
        }
        if !in_progress.insert(name.to_string()) {
            return Err(Error::Cycle(name.to_string()));
        }
        let (_, deps) = self
            .modules
            .get(name)
            .ok_or_else(|| Error::Unknown(name.to_string()))?;
        // modules.dep lists dependencies so that loading them in reverse works.
        for d in deps.iter().rev() {
            self.visit(d, done, in_progress, order)?;
        }
        in_progress.remove(name);
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    const DEP: &str = "kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/crypto/ccp/ccp.ko:
kernel/virt/lib/irqbypass.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
a.ko: b.ko
b.ko: a.ko
";

    fn names(v: Vec<PathBuf>) -> Vec<String> {
        v.iter()
            .map(|p| canonical_name(&p.to_string_lossy()))
            .collect()
    }

    #[test]
    fn kvm_amd_loads_after_its_dependencies() {
        let idx = ModuleIndex::parse(Path::new("/m"), Path::new("x"), DEP).unwrap();
        let order = names(idx.resolve(&["kvm-amd"]).unwrap());
        assert_eq!(order, ["irqbypass", "kvm", "ccp", "kvm_amd"]);
    }

    #[test]
    fn shared_dependencies_appear_once() {
        let idx = ModuleIndex::parse(Path::new("/m"), Path::new("x"), DEP).unwrap();
        let order = names(
            idx.resolve(&["virtio_ring", "virtio", "virtio-rng"])
                .unwrap(),
        );
        assert_eq!(order, ["virtio_ring", "virtio", "virtio_rng"]);
        let paths = idx.resolve(&["virtio_rng"]).unwrap();
        assert_eq!(
            paths.last().unwrap(),
            Path::new("/m/kernel/drivers/char/hw_random/virtio-rng.ko")
        );
    }

    #[test]
    fn unknown_and_cyclic_modules_are_errors() {
        let idx = ModuleIndex::parse(Path::new("/m"), Path::new("x"), DEP).unwrap();
        assert!(matches!(idx.resolve(&["nope"]), Err(Error::Unknown(_))));
        assert!(matches!(idx.resolve(&["a"]), Err(Error::Cycle(_))));
    }

    #[test]
    fn malformed_line_is_reported() {
        let err = ModuleIndex::parse(Path::new("/m"), Path::new("x"), "garbage\n").unwrap_err();
        assert!(matches!(err, Error::Malformed { line: 1, .. }));
    }
}
