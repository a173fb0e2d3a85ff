//! seccomp: the spec's `linux.seccomp` compiled to BPF and installed in the container's init.
//! Small filters are built by seccompiler; filters naming many syscalls (Docker's
//! allow-list) by [`tree`], a search-tree layout that is ≈ 3× cheaper to install and is
//! tested to behave exactly like seccompiler's chain.
//!
//! Vocabulary:
//! - **profile**: the OCI `LinuxSeccomp` (default action, architectures, flags, rules);
//! - **rule**: one `syscalls[i]` entry: names, an action (with `errnoRet`) and optional
//!   argument conditions, ANDed within the entry; several entries for one syscall are ORed;
//! - **program** ([`Program`]): the compiled result, one or more BPF filters, built in the
//!   runtime's parent before `clone` ([`compile`], allocates) and installed in the child as
//!   the last step before `execve` ([`install`], allocates nothing).
//!
//! seccompiler builds filters with a single on-match action each, and OCI rules carry an
//! action each, so a profile becomes a stack of filters: a **base** filter that returns
//! ALLOW for every syscall any rule names (with that rule's conditions) and the default
//! action for everything else, then one filter per other action (ERRNO(n), KILL, TRAP, LOG,
//! TRACE) that returns that action for its rules and ALLOW otherwise. The kernel runs every
//! filter and keeps the most restrictive answer (the newest filter wins ties), so a syscall
//! gets its rule's action, or the default when no rule matches — what libseccomp does for
//! such profiles. When two rules with different actions match the same call, the more
//! restrictive one wins (libseccomp would refuse such a profile).
//!
//! Syscall names are resolved with tables generated from the kernel's uapi headers
//! (`scripts/gen-syscall-tables.sh`) for the host architecture; names that do not exist
//! there (32-bit-only calls like `_llseek`, other architectures' calls, calls newer than the
//! table) are skipped and listed in [`Program::skipped`]. The filters check the native
//! architecture only: a 32-bit (compat) syscall from a container is killed, which is
//! stricter than Docker (it allows x86 and x32 too). On x86_64, profiles whose default
//! action lets calls through get an extra filter that kills x32-ABI calls (their numbers
//! carry bit 30 and would match no rule).
//!
//! [`install`] does not set `no_new_privs`: the caller sets it when the spec asks for it.
//! Without it, installing needs CAP_SYS_ADMIN, so install before dropping capabilities or
//! set no_new_privs.

mod tree;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::OnceLock;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors of [`compile`] and [`install`]; compile errors name the spec field.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{field}: action {action} is not supported by gantry")]
    UnsupportedAction { field: String, action: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("linux.seccomp: architecture {0} is not supported by gantry's seccomp compiler")]
    UnsupportedHostArch(&'static str),
    #[error("linux.seccomp: compiling the BPF filter failed")]
    Compile(#[source] seccompiler::BackendError),
    #[error(
        "installing seccomp filter {index} failed (without no_new_privs this needs CAP_SYS_ADMIN)"
    )]
    Install {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// A compiled seccomp profile: BPF filters to install in order, plus what was skipped.
#[derive(Debug, Clone)]
pub struct Program {
    filters: Vec<BpfProgram>,
    flags: libc::c_ulong,
    skipped: Vec<String>,
}

impl Program {
    /// Syscall names of the profile that do not exist on this architecture (skipped).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Number of BPF filters in the stack (1 + one per non-ALLOW rule action).
    pub fn filter_count(&self) -> usize {
        self.filters.len()
    }

    /// Total BPF instructions over all filters.
    pub fn instruction_count(&self) -> usize {
        self.filters.iter().map(Vec::len).sum()
    }
}

/// The host architecture's syscall table: name → number.
fn syscall_table() -> Result<&'static HashMap<&'static str, i64>, SeccompError> {
    static TABLE: OnceLock<HashMap<&'static str, i64>> = OnceLock::new();
    let text: &'static str = if cfg!(target_arch = "x86_64") {
        include_str!("syscalls_x86_64.txt")
    } else if cfg!(target_arch = "aarch64") {
        include_str!("syscalls_aarch64.txt")
    } else {
        return Err(SeccompError::UnsupportedHostArch(std::env::consts::ARCH));
    };
    Ok(TABLE.get_or_init(|| {
        text.lines()
            .filter_map(|l| {
                let (name, nr) = l.split_once(' ')?;
                Some((name, nr.trim().parse().ok()?))
            })
            .collect()
    }))
}

/// The syscall number of `name` on the host architecture, if it exists there.
pub fn syscall_number(name: &str) -> Option<i64> {
    syscall_table().ok()?.get(name).copied()
}

fn host_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::UnsupportedHostArch(std::env::consts::ARCH))
    }
}

/// One argument condition, already validated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Cond {
    index: u8,
    op: CondOp,
    value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum CondOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq(u64),
}

/// Per syscall number: `None` = matches unconditionally, `Some(rules)` = any of the rules
/// (each a conjunction of conditions).
type RuleSet = BTreeMap<i64, Option<Vec<Vec<Cond>>>>;

fn add_rule(set: &mut RuleSet, nr: i64, conds: &[Cond]) {
    let entry = set.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), conds.is_empty()) {
        (None, _) => {}
        (Some(_), true) => *entry = None,
        (Some(rules), false) => {
            if !rules.iter().any(|r| r == conds) {
                rules.push(conds.to_vec())
            }
        }
    }
}

fn to_action(
    field: &str,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
) -> Result<SeccompAction, SeccompError> {
    let eperm = libc::EPERM as u32;
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno_ret.unwrap_or(eperm)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno_ret.unwrap_or(eperm)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction {
                field: field.to_string(),
                action: "SCMP_ACT_NOTIFY".to_string(),
            })
        }
    })
}

fn to_cond(field: &str, arg: &oci_spec::runtime::LinuxSeccompArg) -> Result<Cond, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i <= 5)
        .ok_or_else(|| SeccompError::Invalid {
            field: format!("{field}.index"),
            reason: format!("argument index {} is out of range 0..=5", arg.index()),
        })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpEq => (CondOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpNe => (CondOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (CondOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (CondOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (CondOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (CondOp::Ge, arg.value()),
        // libseccomp: `value` is the mask, `valueTwo` the datum to compare with.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (CondOp::MaskedEq(arg.value()), arg.value_two().unwrap_or(0))
        }
    };
    Ok(Cond { index, op, value })
}

fn to_seccompiler_rules(set: RuleSet) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    set.into_iter()
        .map(|(nr, rules)| {
            let rules = rules
                .unwrap_or_default()
                .into_iter()
                .map(|conds| {
                    let conds = conds
                        .into_iter()
                        .map(|c| {
                            let op = match c.op {
                                CondOp::Eq => SeccompCmpOp::Eq,
                                CondOp::Ne => SeccompCmpOp::Ne,
                                CondOp::Lt => SeccompCmpOp::Lt,
                                CondOp::Le => SeccompCmpOp::Le,
                                CondOp::Gt => SeccompCmpOp::Gt,
                                CondOp::Ge => SeccompCmpOp::Ge,
                                CondOp::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
                            };
                            SeccompCondition::new(c.index, SeccompCmpArgLen::Qword, op, c.value)
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    SeccompRule::new(conds)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((nr, rules))
        })
        .collect::<Result<_, seccompiler::BackendError>>()
        .map_err(SeccompError::Compile)
}

/// Filters naming more syscalls than this are laid out as a search tree ([`tree`]);
/// smaller ones go through seccompiler's linear chain.
const TREE_THRESHOLD: usize = 16;

fn build(
    rules: RuleSet,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    if rules.len() > TREE_THRESHOLD {
        return tree::build(
            &rules,
            u32::from(mismatch),
            u32::from(matched),
            audit_arch(arch),
        );
    }
    build_linear(rules, mismatch, matched, arch)
}

fn build_linear(
    rules: RuleSet,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(to_seccompiler_rules(rules)?, mismatch, matched, arch)
        .map_err(SeccompError::Compile)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Compile)
}

fn audit_arch(arch: TargetArch) -> u32 {
    match arch {
        TargetArch::x86_64 => 0xc000_003e,
        TargetArch::aarch64 => 0xc000_00b7,
        TargetArch::riscv64 => 0xc000_00f3,
    }
}

/// A profile checked and resolved to syscall numbers, grouped by action.
struct Lowered {
    default: SeccompAction,
    flags: libc::c_ulong,
    /// Every rule of any action: what the base filter lets through.
    allowed: RuleSet,
    /// Rules of each non-ALLOW action, keyed by the action's return value.
    by_action: BTreeMap<u32, (SeccompAction, RuleSet)>,
    skipped: Vec<String>,
}

fn lower(s: &LinuxSeccomp) -> Result<Lowered, SeccompError> {
    let table = syscall_table()?;
    if s.listener_path().is_some() {
        return Err(SeccompError::UnsupportedAction {
            field: "linux.seccomp.listenerPath".to_string(),
            action: "SCMP_ACT_NOTIFY".to_string(),
        });
    }
    let default = to_action(
        "linux.seccomp.defaultAction",
        s.default_action(),
        s.default_errno_ret(),
    )?;

    let mut flags: libc::c_ulong = 0;
    for (i, flag) in s.flags().iter().flatten().enumerate() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The init is single-threaded when it installs: TSYNC changes nothing.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::Invalid {
                    field: format!("linux.seccomp.flags[{i}]"),
                    reason: "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs SCMP_ACT_NOTIFY, which gantry does not support".into(),
                })
            }
        };
    }

    // Every rule, grouped by action; `allowed` is the union the base filter lets through.
    let mut by_action: BTreeMap<u32, (SeccompAction, RuleSet)> = BTreeMap::new();
    let mut allowed = RuleSet::new();
    let mut skipped = Vec::new();
    for (i, rule) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        if rule.names().is_empty() {
            return Err(SeccompError::Invalid {
                field: format!("{field}.names"),
                reason: "a rule must name at least one syscall".into(),
            });
        }
        let action = to_action(&format!("{field}.action"), rule.action(), rule.errno_ret())?;
        let conds = rule
            .args()
            .iter()
            .flatten()
            .enumerate()
            .map(|(j, a)| to_cond(&format!("{field}.args[{j}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        for name in rule.names() {
            let Some(&nr) = table.get(name.as_str()) else {
                if !skipped.contains(name) {
                    skipped.push(name.clone());
                }
                continue;
            };
            add_rule(&mut allowed, nr, &conds);
            if action != SeccompAction::Allow {
                let key = u32::from(action.clone());
                let (_, set) = by_action
                    .entry(key)
                    .or_insert_with(|| (action.clone(), RuleSet::new()));
                add_rule(set, nr, &conds);
            }
        }
    }

    Ok(Lowered {
        default,
        flags,
        allowed,
        by_action,
        skipped,
    })
}

/// Compiles an OCI seccomp profile for the host architecture. Runs in the runtime's parent.
pub fn compile(s: &LinuxSeccomp) -> Result<Program, SeccompError> {
    let arch = host_arch()?;
    let Lowered {
        default,
        flags,
        allowed,
        by_action,
        skipped,
    } = lower(s)?;
    let mut filters = Vec::new();
    if cfg!(target_arch = "x86_64") && matches!(default, SeccompAction::Allow | SeccompAction::Log)
    {
        filters.push(x32_guard());
    }
    if default != SeccompAction::Allow {
        filters.push(build(allowed, default.clone(), SeccompAction::Allow, arch)?);
    }
    for (_, (action, set)) in by_action {
        filters.push(build(set, SeccompAction::Allow, action, arch)?);
    }
    if filters.is_empty() {
        // Default ALLOW and no restricting rule: still install the arch check, so a profile
        // is never silently nothing.
        filters.push(build(
            RuleSet::new(),
            SeccompAction::Allow,
            SeccompAction::KillProcess,
            arch,
        )?);
    }
    Ok(Program {
        filters,
        flags,
        skipped,
    })
}

/// On x86_64, x32-ABI syscalls carry the x86_64 audit arch and their number | 0x40000000:
/// no rule names them, so under a default-ALLOW profile a blocked call would pass as its
/// x32 twin (libseccomp guards against this too). This filter kills any x32 syscall.
fn x32_guard() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        op(LD_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ, 0, 3, AUDIT_ARCH_X86_64),
        op(LD_ABS, 0, 0, 0), // seccomp_data.nr
        op(JGE, 0, 1, X32_SYSCALL_BIT),
        op(RET, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Installs the program's filters on the calling thread, in order. Allocates nothing
/// (safe between `clone`/`fork` of a multi-threaded parent and `execve`).
pub fn install(p: &Program) -> Result<(), SeccompError> {
    for (index, filter) in p.filters.iter().enumerate() {
        let prog = libc::sock_fprog {
            len: filter.len() as libc::c_ushort,
            // seccompiler's sock_filter is #[repr(C)] with the kernel's layout.
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points to a live, well-formed BPF program; the kernel copies it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                p.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Install {
                index,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
