-- Pure text arithmetic of a suggestion: what part of an item is still to be shown after what is
-- typed, and the pieces that "accept word" and "accept line" take from it. No editor state.
local M = {}

--- Splits text on "\n" keeping empty pieces ("a\n" -> { "a", "" }).
---@param text string
---@return string[]
function M.lines(text)
  return vim.split(text, "\n", { plain = true })
end

--- The part of an item's insert text that is not on screen yet.
--- The item replaces `line:sub(start_col + 1, end_col)` (0-based byte columns, end exclusive);
--- the cursor sits at `cursor_col` with start_col <= cursor_col. What the user typed between
--- start_col and the cursor must be a prefix of the insert text, else the item is stale (nil).
---@param line string
---@param start_col integer
---@param cursor_col integer
---@param insert_text string
---@return string|nil
function M.visible_suffix(line, start_col, cursor_col, insert_text)
  if cursor_col < start_col then
    return nil
  end
  local typed = line:sub(start_col + 1, cursor_col)
  if insert_text:sub(1, #typed) ~= typed then
    return nil
  end
  return insert_text:sub(#typed + 1)
end

--- The next word of a suggestion, as "accept word" takes it: leading whitespace, then a run of
--- word characters or a run of one other non-space character class, stopping at a newline.
--- A suggestion that starts with a newline yields that newline and the next line's indent.
---@param text string
---@return string
function M.next_word(text)
  if text == "" then
    return ""
  end
  local newline_indent = text:match("^\n[ \t]*")
  if newline_indent then
    return newline_indent
  end
  local leading = text:match("^[ \t]*")
  local rest = text:sub(#leading + 1)
  local word = rest:match("^[%w_]+") or rest:match("^[^%w_%s]+") or ""
  return leading .. word
end

--- The rest of the current line of a suggestion, as "accept line" takes it; a suggestion that
--- starts with a newline yields that newline and the whole next line.
---@param text string
---@return string
function M.next_line(text)
  local first_newline = text:find("\n", 1, true)
  if first_newline == nil then
    return text
  end
  if first_newline > 1 then
    return text:sub(1, first_newline - 1)
  end
  local second_newline = text:find("\n", 2, true)
  return second_newline and text:sub(1, second_newline - 1) or text
end

return M
