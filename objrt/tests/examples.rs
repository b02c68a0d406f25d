//! The examples run as tests, so they never rot.

#[allow(dead_code, reason = "only main is used here")]
#[path = "../examples/evacuation.rs"]
mod evacuation;

#[test]
fn evacuation_example_runs() {
    if std::env::var_os("FARMEM_SERVER").is_some() {
        eprintln!("skipped: FARMEM_SERVER is set; the example would use that server");
        return;
    }
    evacuation::main();
}

#[allow(dead_code, reason = "only main is used here")]
#[path = "../examples/deref_cost.rs"]
mod deref_cost;

#[test]
fn deref_cost_example_runs() {
    deref_cost::main();
}
