fn main() {
    println!("{}", guard::EBPF_OBJECT.len());
}
