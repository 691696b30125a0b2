//! Embeds the chart page's library when `web/node_modules` has it (`npm ci` in
//! `web/`, which scripts/demo and scripts/test run). Without it the binary
//! still builds, and its chart page says how to get the library.

fn main() {
    let lib =
        "web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js";
    println!("cargo::rustc-check-cfg=cfg(embedded_chart_lib)");
    println!("cargo::rerun-if-changed={lib}");
    println!("cargo::rerun-if-changed=web/node_modules/lightweight-charts/package.json");
    if std::path::Path::new(lib).exists() {
        println!("cargo::rustc-cfg=embedded_chart_lib");
    } else {
        println!(
            "cargo::warning=web/node_modules is missing: the chart page is embedded without its library; run `npm ci` in web/ and rebuild"
        );
    }
}
