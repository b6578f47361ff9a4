//! Prints the URL schemes this binary can use, comma separated.

fn main() {
    println!("{}", resilient_storage::registry::schemes().join(","));
}
