//! Unit tests of the command line: parsing the launcher form, near-miss suggestions, `-v` versus docker's volume, the deferred subcommand tree.
use super::hook_argv::{globals_from_env, GLOBAL_ENV};
use super::*;
use clap::CommandFactory;

fn argv(s: &str) -> Vec<OsString> {
    s.split_whitespace().map(OsString::from).collect()
}

#[test]
fn near_misses_of_commands_and_flags_are_named() {
    // (argv, the message, or None when the words must reach the launcher untouched)
    let table: &[(&str, Option<&str>)] = &[
        ("migrun statsu", Some("'statsu' is not a migrun command; did you mean 'status'? (to run an image named statsu: migrun run statsu)")),
        ("migrun profile", Some("'profile' is not a migrun command; did you mean 'profiles'? (to run an image named profile: migrun run profile)")),
        ("migrun placement", Some("'placement' is not a migrun command; did you mean 'placements'? (to run an image named placement: migrun run placement)")),
        ("migrun teardwon", Some("'teardwon' is not a migrun command; did you mean 'teardown'? (to run an image named teardwon: migrun run teardwon)")),
        ("migrun --gpu 3 profiles", Some("'profiles' after --gpu 3 is read as the IMAGE to run; a command's flags go after its name: migrun profiles --gpu 3 (to run an image named profiles: migrun run --gpu 3 profiles)")),
        ("migrun --proflie 3g.40gb busybox", Some("unknown option '--proflie'; did you mean '--profile'? (migrun's own flags come first, docker run's options after them)")),
        ("migrun --profile 1g.10gb --dryrun busybox", Some("unknown option '--dryrun'; did you mean '--dry-run'? (migrun's own flags come first, docker run's options after them)")),
        ("migrun run --injet=env busybox", Some("unknown option '--injet'; did you mean '--inject'? (migrun's own flags come first, docker run's options after them)")),
        // Real images and docker's own options are never "corrected".
        ("migrun run statsu", None),
        ("migrun gcc", None),
        ("migrun busybox", None),
        ("migrun stats:latest", None),
        ("migrun --profile 1g.10gb --pid host busybox", None),
        ("migrun --profile 1g.10gb --gpus all busybox", None),
        ("migrun --profile 1g.10gb statsu", None),
        ("migrun -v --profile 1g.10gb busybox", None),
    ];
    for (line, want) in table {
        match (parse(argv(line)), want) {
            (Err(e), Some(msg)) => {
                assert_eq!(e.to_string(), *msg, "{line}");
                assert_eq!(e.exit_code(), crate::exit::USAGE, "{line}");
            }
            (Ok(cli), None) => assert!(matches!(cli.command, Command::Run(_)), "{line}"),
            (r, _) => panic!("{line}: {r:?}"),
        }
    }
}

#[test]
fn dash_v_is_docker_volume_when_a_volume_follows() {
    // (argv, migrun's verbosity, docker's words)
    let table: &[(&str, u8, &str)] = &[
        (
            "migrun --profile 1g.10gb -v /data:/data busybox",
            0,
            "-v /data:/data busybox",
        ),
        (
            "migrun -v /data:/data --profile 1g.10gb busybox",
            0,
            "-v /data:/data --profile 1g.10gb busybox",
        ),
        (
            "migrun --profile 1g.10gb -v vol:/data busybox",
            0,
            "-v vol:/data busybox",
        ),
        (
            "migrun --profile 1g.10gb -v /scratch busybox",
            0,
            "-v /scratch busybox",
        ),
        ("migrun --profile 1g.10gb -v busybox", 1, "busybox"),
        ("migrun -v --profile 1g.10gb busybox", 1, "busybox"),
        (
            "migrun -vv --profile 1g.10gb -v /d:/d busybox",
            2,
            "-v /d:/d busybox",
        ),
    ];
    for (line, verbose, docker) in table {
        let cli = parse(argv(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
        let Command::Run(a) = cli.command else {
            panic!("{line}: not the launcher")
        };
        assert_eq!(cli.global.verbose, *verbose, "{line}");
        assert_eq!(a.docker_args.join(" "), *docker, "{line}");
    }
}

#[test]
fn deferred_subcommands_keep_their_about_and_nested_commands() {
    let mut cmd = Cli::command();
    cmd.build();
    let about = |name: &str| {
        let sub = cmd.find_subcommand(name).unwrap();
        sub.get_about().map(|a| a.to_string()).unwrap_or_default()
    };
    // Each subcommand's about is its variant's doc, never the doc of the struct holding its flags.
    assert!(about("run").starts_with("Run a container on a MIG slice"));
    assert!(about("profiles").starts_with("List GPU-instance profiles"));
    assert!(about("status").starts_with("Show GPUs, MIG mode"));
    assert!(about("alloc").starts_with("Allocate a MIG instance"));
    assert!(about("__watch").starts_with("Internal: wait for a detached"));
    // `migrun help mig enable` (and completions of it) need the nested commands at build time.
    let help = cmd.find_subcommand("help").unwrap();
    for (parent, child) in [("mig", "enable"), ("mig", "disable"), ("sim", "reset")] {
        let p = help.find_subcommand(parent).unwrap();
        assert!(p.find_subcommand(child).is_some(), "help {parent} {child}");
    }
    // A deferred subcommand still gets its flags when it is the one parsed.
    let cli = parse(argv("migrun hook prestart")).unwrap();
    assert!(matches!(cli.command, Command::Hook(_)));
    let Err(CliError::Clap(e)) = parse(argv("migrun alloc --bogus")) else {
        panic!("clap refuses an unknown flag of a subcommand");
    };
    assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
}

#[test]
fn clap_definitions_are_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn launcher_form_without_run() {
    let cli = parse(argv(
        "migrun --profile 3g.40gb --wait=5 -it --rm -e X=1 --gpus all busybox sh -c true",
    ))
    .unwrap();
    let Command::Run(r) = cli.command else {
        panic!("not run")
    };
    assert_eq!(r.request.profile.as_deref(), Some("3g.40gb"));
    assert_eq!(r.request.wait, Some(5));
    assert_eq!(
        r.docker_args,
        argv("-it --rm -e X=1 --gpus all busybox sh -c true")
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    );
}

#[test]
fn globals_before_the_launcher_and_explicit_run() {
    let cli = parse(argv(
        "migrun --simulate h100-80gb --state-dir /tmp/x run --profile 9 status",
    ))
    .unwrap();
    assert_eq!(cli.global.simulate.as_deref(), Some("h100-80gb"));
    let Command::Run(r) = cli.command else {
        panic!("not run")
    };
    assert_eq!(r.docker_args, vec!["status".to_string()]);

    let cli = parse(argv("migrun --simulate h100-80gb status --json")).unwrap();
    assert!(matches!(
        cli.command,
        Command::Status(ListArgs { json: true, .. })
    ));

    let cli = parse(argv("migrun --profile 1g.10gb --wait busybox")).unwrap();
    let Command::Run(r) = cli.command else {
        panic!()
    };
    assert_eq!(r.request.wait, Some(0));
}

#[test]
fn launcher_needs_an_image() {
    assert!(parse(argv("migrun --profile 3g.40gb")).is_err());
}

/// The hook fast path (`parse_hook`) takes exactly `migrun hook <stage>` and gives what the whole tree
/// gives; every other argv goes to the whole tree.
#[test]
fn the_hook_fast_path_parses_as_the_whole_tree_does() {
    let taken = [
        "migrun hook prestart",
        "migrun hook poststop",
        "migrun hook precreate",
        "migrun hook createRuntime",
        "migrun hook create-runtime",
    ];
    let env_ok = globals_from_env(|n| std::env::var_os(n)).is_some();
    for line in taken {
        let whole = Cli::try_parse_from(argv(line)).unwrap();
        assert_eq!(
            format!("{:?}", parse(argv(line)).unwrap()),
            format!("{whole:?}"),
            "{line}"
        );
        // This process's own MIGRUN_* variables decide whether the fast path may take it.
        assert_eq!(parse_hook(&argv(line)).is_some(), env_ok, "{line}");
    }
    let left = [
        "migrun hook",
        "migrun hook --help",
        "migrun hook prestart --help",
        "migrun hook --version",
        "migrun hook prestrat",
        "migrun hook Prestart",
        "migrun hook prestart extra",
        "migrun hook prestart -v",
        "migrun hook prestart --state-dir /run/x",
        "migrun -v hook prestart",
        "migrun status",
    ];
    for line in left {
        assert!(parse_hook(&argv(line)).is_none(), "{line}: taken");
    }
    // Those still parse, or fail, through the whole tree.
    let v = parse(argv("migrun hook prestart -v --state-dir /run/x")).unwrap();
    assert_eq!(v.global.verbose, 1);
    assert_eq!(v.global.state_dir, Some(PathBuf::from("/run/x")));
    let err = |line: &str| match parse(argv(line)) {
        Err(CliError::Clap(e)) => e.to_string(),
        other => panic!("{line}: {other:?}"),
    };
    assert!(err("migrun hook prestrat").contains("invalid value 'prestrat'"));
    assert!(err("migrun hook prestart --help").contains("Hook stage"));
}

/// The fast path reads the same variables as the clap definitions, into the same fields, and leaves
/// to clap what clap would refuse.
#[test]
fn the_hook_fast_path_reads_the_globals_clap_reads() {
    use std::os::unix::ffi::OsStringExt;
    let cmd = Cli::command();
    let by_id = |id: &str| {
        cmd.get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    let ids = ["simulate", "state_dir", "config"];
    for (id, env) in ids.iter().zip(GLOBAL_ENV) {
        assert_eq!(by_id(id).as_deref(), Some(env), "{id}");
    }
    let with_env = cmd
        .get_arguments()
        .filter(|a| a.get_env().is_some())
        .count();
    assert_eq!(
        with_env,
        GLOBAL_ENV.len(),
        "a global flag with an env var the fast path does not read"
    );

    let from = |pairs: &[(&str, OsString)]| {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        globals_from_env(move |n| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    };
    let none = from(&[]).unwrap();
    assert_eq!(
        (none.simulate, none.state_dir, none.config, none.verbose),
        (None, None, None, 0)
    );
    let all = from(&[
        ("MIGRUN_SIMULATE", "h100-80gb:2".into()),
        ("MIGRUN_STATE_DIR", "/run/s".into()),
        ("MIGRUN_CONFIG", "/etc/c.toml".into()),
    ])
    .unwrap();
    assert_eq!(all.simulate.as_deref(), Some("h100-80gb:2"));
    assert_eq!(all.state_dir, Some(PathBuf::from("/run/s")));
    assert_eq!(all.config, Some(PathBuf::from("/etc/c.toml")));
    for empty in GLOBAL_ENV {
        assert!(from(&[(empty, OsString::new())]).is_none(), "{empty}");
    }
    let odd = OsString::from_vec(vec![b'/', 0xff]);
    assert!(from(&[("MIGRUN_SIMULATE", odd.clone())]).is_none());
    assert_eq!(
        from(&[("MIGRUN_STATE_DIR", odd.clone())])
            .unwrap()
            .state_dir,
        Some(PathBuf::from(odd))
    );
}
