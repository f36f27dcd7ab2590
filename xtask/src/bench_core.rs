use clap::Args;
#[derive(Args)]
pub struct CoreArgs {}
pub fn run(_a: CoreArgs) -> bool {
    true
}
