//! Route parsing: any path either routes or gets an OCI error, never a panic; every
//! name and reference it accepts is valid on its own.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::api::route::{self, Route};
use portcullis::oci::RepoName;

fuzz_target!(|path: &str| {
    let name = match route::parse(path) {
        Ok(Route::AdminGc) => {
            assert_eq!(path, "/admin/gc");
            return;
        }
        Ok(Route::Base | Route::Catalog) | Err(_) => return,
        Ok(
            Route::Tags(name)
            | Route::Manifest(name, _)
            | Route::Blob(name, _)
            | Route::UploadStart(name)
            | Route::Upload(name, _)
            | Route::Referrers(name, _),
        ) => name,
    };
    assert!(!name.as_str().split('/').any(|c| c == ".." || c.is_empty()));
    assert_eq!(RepoName::parse(name.as_str()).unwrap(), name);
    // Parse then display gives back the route.
    let again = route::parse(&format!("/v2/{name}/tags/list")).unwrap();
    assert_eq!(again, Route::Tags(name));
    let _ = route::query_pairs(Some(path));
});
