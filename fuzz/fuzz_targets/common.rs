// Shared by the fuzz targets: split the input into fields (0xFF separates them).
#[allow(dead_code)]
pub fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut out: Vec<String> = data
        .splitn(n, |&b| b == 0xFF)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    out.resize(n, String::new());
    out
}
