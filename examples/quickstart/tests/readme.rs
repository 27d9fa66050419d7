//! The README's quick start is this crate's `src/main.rs`, word for word: the code a newcomer
//! copies is the code the tests compile.

#[test]
fn the_readme_shows_this_main_rs() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let main =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/main.rs")).unwrap();
    let marker = "<!-- examples/quickstart/src/main.rs -->\n```rust\n";
    let start = readme
        .find(marker)
        .expect("README.md has the quick start's marker")
        + marker.len();
    let end = start
        + readme[start..]
            .find("```\n")
            .expect("the quick start's code block ends");
    assert!(
        readme[start..end] == main,
        "README.md's quick start differs from examples/quickstart/src/main.rs: copy the file \
         into the README"
    );
}
