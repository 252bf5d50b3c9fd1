-- How an InlineCompletionItem fits the line on screen. Pure: the caller passes the line and the
-- cursor, so this is tested without a buffer.
local text = require("exlsp.text")

local M = {}

--- insertText of an item as plain text (a snippet's placeholders are left as written).
---@param item table lsp.InlineCompletionItem
---@return string
function M.insert_text(item)
  local value = item.insertText
  if type(value) == "table" then
    value = value.value
  end
  return type(value) == "string" and value or ""
end

---@class exlsp.Fit
---@field suffix string what to show and insert at the cursor
---@field end_col integer byte column where the text the item replaces ends (>= the cursor)

--- Where `item` goes on `line` with the cursor at byte column `col` of 0-based `row`; nil when the
--- item does not agree with what was typed, or leaves nothing to show.
---@param line string
---@param row integer
---@param col integer
---@param item table
---@param encoding string the client's position encoding ("utf-8", "utf-16", "utf-32")
---@return exlsp.Fit|nil
function M.fit(line, row, col, item, encoding)
  local start_col, end_col = col, col
  if item.range and item.range.start.line == row and item.range["end"].line == row then
    start_col = vim.str_byteindex(line, encoding, item.range.start.character, false)
    end_col = vim.str_byteindex(line, encoding, item.range["end"].character, false)
  end
  end_col = math.max(end_col, col)
  local suffix = text.visible_suffix(line, start_col, col, M.insert_text(item))
  if suffix == nil or suffix == "" then
    return nil
  end
  -- Text after the cursor that the item rewrites identically (a closing bracket) is already on
  -- screen: show only what comes before it.
  local tail = line:sub(col + 1, end_col)
  if tail ~= "" and not suffix:find("\n", 1, true) and suffix:sub(-#tail) == tail then
    suffix = suffix:sub(1, #suffix - #tail)
    end_col = col
  end
  return { suffix = suffix, end_col = end_col }
end

return M
