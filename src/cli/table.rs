//! Every table the CLI prints. Columns are aligned by display width (a
//! Japanese display name is two terminal columns per character), numbers
//! right-aligned, no borders: `mailq`/`qshape` style, easy to read and to
//! cut with `awk`. Scripts should use `--json` instead.

use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

pub struct Columns {
    table: Table,
}

impl Columns {
    /// `numeric` names the header positions that hold numbers.
    pub fn new(headers: &[&str], numeric: &[usize]) -> Columns {
        let mut table = Table::new();
        table
            .load_style(NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(headers.to_vec());
        for index in numeric {
            if let Some(column) = table.column_mut(*index) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        Columns { table }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.table.add_row(cells);
    }

    /// The table as text: one line per row, no trailing spaces, and no
    /// padding before the first column.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.table.lines() {
            let line = line.strip_prefix(' ').unwrap_or(&line).trim_end();
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_display_width() {
        let mut table = Columns::new(&["NAME", "STATE", "QUEUE"], &[2]);
        table.row(vec![
            "a-very-long-upstream:25".into(),
            "down".into(),
            "2".into(),
        ]);
        table.row(vec!["山田".into(), "up".into(), "12345".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let width = |s: &str| unicode_width::UnicodeWidthStr::width(s);
        // Every line is as wide as the others (right-aligned last column).
        assert!(lines.iter().all(|l| width(l) == width(lines[0])), "{text}");
        // The STATE column starts at the same display column everywhere.
        let state_at = |line: &str, word: &str| width(&line[..line.find(word).unwrap()]);
        assert_eq!(state_at(lines[0], "STATE"), state_at(lines[1], "down"));
        assert_eq!(state_at(lines[1], "down"), state_at(lines[2], "up"));
        assert!(lines[0].starts_with("NAME"), "{text}");
        assert!(lines[2].ends_with("12345"), "{text}");
    }
}
