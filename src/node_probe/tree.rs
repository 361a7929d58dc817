//! One tree for both forms of `nvidia-smi -q`: the XML of `-q -x` and the
//! indented "Key : Value" text of `-q`. Keys are compared normalised
//! (lower case, letters and digits only), so `product_name` and
//! `Product Name` are the same key, and one reader serves both forms.

/// Deeper than any nvidia-smi report nests (it goes 5 deep); deeper input
/// is flattened at this depth, so that no input can exhaust the stack.
const MAX_DEPTH: usize = 24;

/// One element (XML) or one line with what is indented under it (text).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Node {
    /// The key as written, trimmed: `GPU 00000000:29:00.0`, `product_name`.
    pub label: String,
    /// The key normalised: `gpu00000000290000`, `productname`.
    pub key: String,
    /// The value, trimmed, as written (`N/A` included); `None` for a
    /// section.
    pub value: Option<String>,
    pub children: Vec<Node>,
}

/// `Product Name`, `product_name` → `productname`.
pub(crate) fn norm(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Node {
    fn new(label: &str, value: Option<&str>) -> Node {
        let label = label.trim();
        Node {
            label: label.to_string(),
            key: norm(label),
            value: value.map(|v| v.trim().to_string()),
            children: Vec::new(),
        }
    }

    /// The first child with one of these keys (`a|b`, compared normalised).
    pub fn child(&self, keys: &str) -> Option<&Node> {
        let keys: Vec<String> = keys.split('|').map(norm).collect();
        self.children.iter().find(|c| keys.contains(&c.key))
    }

    /// The node at a path of keys, `fabric/health/summary`; each step may
    /// name alternatives, `inforom_version/img_version|image_version`.
    pub fn find(&self, path: &str) -> Option<&Node> {
        path.split('/')
            .try_fold(self, |node, step| node.child(step))
    }

    /// The value at a path, `None` when absent or not available.
    pub fn text(&self, path: &str) -> Option<String> {
        self.find(path)
            .and_then(|n| n.value.as_deref())
            .and_then(super::clean)
    }

    /// A count at a path (`0`, `12`), `None` when absent or no number.
    pub fn count(&self, path: &str) -> Option<u64> {
        self.text(path).and_then(|v| v.parse().ok())
    }

    /// A yes/no at a path.
    pub fn flag(&self, path: &str) -> Option<bool> {
        match self.text(path)?.to_ascii_lowercase().as_str() {
            "yes" | "true" => Some(true),
            "no" | "false" => Some(false),
            _ => None,
        }
    }
}

/// The tree of an XML document's root element, or why it is not XML.
pub(crate) fn from_xml(text: &str) -> Result<Node, String> {
    let options = roxmltree::ParsingOptions {
        // nvidia-smi's XML names its DTD (`nvsmi_device_v13.dtd`).
        allow_dtd: true,
        // A whole 8-GPU report is some 20,000 nodes.
        nodes_limit: 2_000_000,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).map_err(|e| e.to_string())?;
    Ok(element(doc.root_element(), 0))
}

fn element(el: roxmltree::Node<'_, '_>, depth: usize) -> Node {
    let mut node = Node::new(el.tag_name().name(), None);
    let kids: Vec<_> = el.children().filter(|c| c.is_element()).collect();
    if kids.is_empty() {
        node.value = Some(el.text().unwrap_or_default().trim().to_string());
    } else if depth < MAX_DEPTH {
        node.children = kids.into_iter().map(|k| element(k, depth + 1)).collect();
    }
    node
}

/// The tree of `nvidia-smi -q` text: each line `Key : Value` or a section
/// name, nested by indentation. The root holds the least indented lines.
pub(crate) fn from_text(text: &str) -> Node {
    // The open sections, outermost first, each with its indentation; the
    // root's is -1.
    let mut open: Vec<(isize, Node)> = vec![(-1, Node::default())];
    for line in text.lines() {
        let body = line.trim_start();
        if body.trim().is_empty() || body.starts_with("====") {
            continue;
        }
        let indent = line[..line.len() - body.len()]
            .chars()
            .map(|c| if c == '\t' { 8 } else { 1 })
            .sum::<isize>();
        let (label, value) = split_line(body);
        if label.is_empty() {
            continue;
        }
        while open.len() > 1 && open.last().is_some_and(|(i, _)| *i >= indent) {
            close(&mut open);
        }
        if open.len() > MAX_DEPTH {
            close(&mut open);
        }
        open.push((indent, Node::new(label, value)));
    }
    while open.len() > 1 {
        close(&mut open);
    }
    open.pop().map(|(_, n)| n).unwrap_or_default()
}

fn close(open: &mut Vec<(isize, Node)>) {
    if let Some((_, node)) = open.pop()
        && let Some((_, parent)) = open.last_mut()
    {
        parent.children.push(node);
    }
}

/// `Product Name      : NVIDIA GB200` → (`Product Name`, `NVIDIA GB200`);
/// `Fabric` → (`Fabric`, none). Values may hold colons (`Bus Id`, times);
/// labels do not, but section names may (`GPU 00000000:29:00.0`).
fn split_line(body: &str) -> (&str, Option<&str>) {
    if let Some(at) = body.find(" : ") {
        return (body[..at].trim(), Some(&body[at + 3..]));
    }
    if let Some(label) = body.trim_end().strip_suffix(" :") {
        return (label.trim(), Some(""));
    }
    // `Key: value`, where the label column overflows: the first colon,
    // followed by a space.
    if let Some(at) = body.find(':')
        && body[at + 1..].starts_with(' ')
    {
        return (body[..at].trim(), Some(&body[at + 1..]));
    }
    (body.trim(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_nests_by_indentation() {
        let tree = from_text(
            "Driver Version : 1.2\nGPU 00000000:29:00.0\n    Product Name   : NVIDIA GB200\n    Fabric\n        State : Completed\n        Health\n            Summary : Healthy\n    Minor Number : 0\n",
        );
        assert_eq!(tree.text("driver_version").as_deref(), Some("1.2"));
        let gpu = &tree.children[1];
        assert_eq!(gpu.label, "GPU 00000000:29:00.0");
        assert_eq!(gpu.value, None);
        assert_eq!(
            gpu.text("fabric/health/summary").as_deref(),
            Some("Healthy")
        );
        assert_eq!(gpu.count("minor_number"), Some(0));
    }

    #[test]
    fn lines_split_at_the_label_colon() {
        assert_eq!(
            split_line("Timestamp    : Mon Nov 18 09:29:52 2024"),
            ("Timestamp", Some("Mon Nov 18 09:29:52 2024"))
        );
        assert_eq!(
            split_line("GPU 00000000:DD:00.0"),
            ("GPU 00000000:DD:00.0", None)
        );
        assert_eq!(split_line("Processes : None"), ("Processes", Some("None")));
        assert_eq!(
            split_line("Link 0: 53.125 GB/s"),
            ("Link 0", Some(" 53.125 GB/s"))
        );
    }

    #[test]
    fn deep_input_is_flattened() {
        let text: String = (0..10_000)
            .map(|i| format!("{}k{i}\n", " ".repeat(i)))
            .collect();
        let tree = from_text(&text);
        let mut depth = 0;
        let mut node = &tree;
        while let Some(c) = node.children.first() {
            depth += 1;
            node = c;
        }
        assert!(depth <= MAX_DEPTH + 1, "{depth}");
        let xml = format!("{}{}", "<a>".repeat(5000), "</a>".repeat(5000));
        let _ = from_xml(&xml);
    }
}
