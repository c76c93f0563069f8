//! Choosing one image of an archive by name and tag, as dockerTools does:
//! what is not given is taken from the first entry that fits.

use std::fmt;

use super::ImageError;

/// The image asked for (`--from-image-name`, `--from-image-tag`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub name: Option<String>,
    pub tag: Option<String>,
}

/// The image that was taken, and whether any part of it was defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub name: Option<String>,
    pub tag: Option<String>,
    /// True when the name or the tag was not given and the first one found
    /// was taken.
    pub defaulted: bool,
}

impl fmt::Display for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.tag) {
            (Some(n), Some(t)) => write!(f, "{n}:{t}"),
            (Some(n), None) => write!(f, "{n}"),
            (None, Some(t)) => write!(f, ":{t}"),
            (None, None) => write!(f, "(untagged)"),
        }
    }
}

impl Selected {
    /// A line for the log saying what was taken, when it was not asked for.
    pub fn message(&self) -> Option<String> {
        self.defaulted.then(|| format!("From-image name or tag not given; took the first one: {self}"))
    }
}

/// One image an archive offers under one name and tag, in archive order.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<T> {
    pub(crate) name: Option<String>,
    pub(crate) tag: Option<String>,
    pub(crate) item: T,
}

/// Splits `registry:5000/repo/name:tag` into name and tag.
pub(crate) fn split_reference(reference: &str) -> (String, Option<String>) {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (reference[..i].to_string(), Some(reference[i + 1..].to_string())),
        _ => (reference.to_string(), None),
    }
}

/// The short form of an image name, as `docker images` shows it:
/// `docker.io/library/x` and `docker.io/x` are `x`, `docker.io/a/b` is `a/b`.
fn familiar(name: &str) -> &str {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name)
}

/// Picks the first candidate matching every part of `sel` that is given.
pub(crate) fn select<T: Clone>(candidates: &[Candidate<T>], sel: &Selector) -> Result<(T, Selected), ImageError> {
    let fits = |c: &&Candidate<T>| {
        sel.name.as_ref().map_or(true, |n| c.name.as_deref().map(familiar) == Some(familiar(n)))
            && sel.tag.as_ref().map_or(true, |t| c.tag.as_ref() == Some(t))
    };
    match candidates.iter().find(fits) {
        Some(c) => Ok((
            c.item.clone(),
            Selected { name: c.name.clone(), tag: c.tag.clone(), defaulted: sel.name.is_none() || sel.tag.is_none() },
        )),
        None => {
            let wanted = Selected { name: sel.name.clone(), tag: sel.tag.clone(), defaulted: false };
            let present: Vec<String> = candidates
                .iter()
                .map(|c| Selected { name: c.name.clone(), tag: c.tag.clone(), defaulted: false }.to_string())
                .collect();
            Err(ImageError::ImageNotFound {
                wanted: wanted.to_string(),
                present: if present.is_empty() { "none".to_string() } else { present.join(", ") },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, tag: &str, item: u32) -> Candidate<u32> {
        Candidate { name: Some(name.into()), tag: Some(tag.into()), item }
    }

    fn sel(name: Option<&str>, tag: Option<&str>) -> Selector {
        Selector { name: name.map(Into::into), tag: tag.map(Into::into) }
    }

    #[test]
    fn split_reference_handles_registry_ports_and_digests() {
        assert_eq!(split_reference("a:b"), ("a".into(), Some("b".into())));
        assert_eq!(split_reference("reg:5000/x/y:1.0"), ("reg:5000/x/y".into(), Some("1.0".into())));
        assert_eq!(split_reference("reg:5000/x"), ("reg:5000/x".into(), None));
        assert_eq!(split_reference("x:t@sha256:00"), ("x".into(), Some("t".into())));
    }

    #[test]
    fn nothing_given_takes_the_first_and_says_so() {
        let cs = [c("a", "1", 1), c("b", "2", 2)];
        let (item, s) = select(&cs, &sel(None, None)).unwrap();
        assert_eq!(item, 1);
        assert!(s.defaulted);
        assert_eq!(s.message().unwrap(), "From-image name or tag not given; took the first one: a:1");
    }

    #[test]
    fn name_only_takes_its_first_tag() {
        let cs = [c("a", "1", 1), c("b", "2", 2), c("b", "3", 3)];
        assert_eq!(select(&cs, &sel(Some("b"), None)).unwrap().0, 2);
        let (item, s) = select(&cs, &sel(Some("b"), Some("3"))).unwrap();
        assert_eq!(item, 3);
        assert!(!s.defaulted && s.message().is_none());
    }

    #[test]
    fn docker_hub_names_match_their_short_form() {
        let cs = [c("docker.io/library/busybox", "1", 1), c("docker.io/me/x", "2", 2)];
        assert_eq!(select(&cs, &sel(Some("busybox"), None)).unwrap().0, 1);
        assert_eq!(select(&cs, &sel(Some("me/x"), None)).unwrap().0, 2);
        assert_eq!(select(&cs, &sel(Some("docker.io/me/x"), None)).unwrap().0, 2);
        assert!(select(&cs, &sel(Some("x"), None)).is_err());
    }

    #[test]
    fn not_found_lists_what_is_present() {
        let cs = [c("a", "1", 1), c("b", "2", 2)];
        let e = select(&cs, &sel(Some("a"), Some("2"))).unwrap_err();
        assert_eq!(e.to_string(), "No image a:2 in the base image; present: a:1, b:2");
    }
}
